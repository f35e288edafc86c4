from runner.app import main

# Guarded: the plot helper process (spawn) imports this module again as __mp_main__.
if __name__ == "__main__":
    main()
