"""Tasks: names and answer formats, data and splits, and how an answer is read and scored."""
