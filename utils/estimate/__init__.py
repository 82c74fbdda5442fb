"""--estimate: the requests of a run's plan with their tokens, then time and money. Imported only when needed."""
