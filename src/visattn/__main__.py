"""``python -m visattn``: the same command as the ``visattn`` script."""

from .cli import run

if __name__ == "__main__":
    run()
