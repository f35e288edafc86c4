from runner.cli import main

# Guarded: the plot helper (spawn) and the joblib workers (forkserver) import this module again
# as __mp_main__.
if __name__ == "__main__":
    main()
