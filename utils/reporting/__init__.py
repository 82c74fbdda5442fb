"""What a run shows and leaves: the run folder and comet_ml, progress bars, prompt measures, plots, reports."""
