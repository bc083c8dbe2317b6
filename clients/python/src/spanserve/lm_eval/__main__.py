"""``python -m spanserve.lm_eval ARGS``: lm-eval's CLI with the ``spanserve`` model."""

from spanserve.lm_eval import main

if __name__ == "__main__":
    main()
