from dinoflow.cli import entry

entry()
