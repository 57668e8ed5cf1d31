"""Stage chat_eval: judge-scored open answers and win rate (vital/pipeline.py has the table, `vital run chat_eval` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("chat_eval")
