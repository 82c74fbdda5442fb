"""What leaves a client: the leak audit and guard, simulated poisoned clients, the server's rules for each client."""
