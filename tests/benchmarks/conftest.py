# The files here are scripts run by hand (they import torch and scikit-learn, which are only
# benchmark extras, and take minutes); pytest must never collect them.
collect_ignore_glob = ["*.py"]
