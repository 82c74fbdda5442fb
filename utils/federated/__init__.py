"""The method: a client's local step (client.py) and the server's round loop (rounds.py), walking the run's plan."""
