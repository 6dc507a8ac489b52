from normbench.cli import run

run()
