"""How bprun's processes start, stop and exit: cooperative interruption, child processes that end
with their parent, and the errors that end a command with a message and an exit code.

Standard library only: ``bprun`` installs its signal handlers from here before anything else is
imported.
"""
