"""The federated method, in parts named after it (the three train_*.py modules are short orchestrations of it).

    federated/  the method: the client's local step (client.py), the round loop (rounds.py), the plan of a
                run (plan.py), aggregation, screening, partition, what a run is (experiment.py), what the
                loop records and checkpoints (recording.py, run_state.py), and the setup around it (runner.py)
    tasks/      task names and answer formats (registry.py), data and splits, synthetic tasks, the final
                answer statement, scoring, and the accuracy of a prompt (evaluation.py)
    privacy/    the leak audit and guard, simulated attackers, what the server tells each client
    estimate/   --estimate: the plan's requests and tokens, outcomes, cost, prices, token counts, summary
    reporting/  the run folder and comet_ml (tracking.py), progress bars, prompt lengths and UID measures,
                plots, the run's summary, and the report over many runs
    config.py   the command line and YAML configs; run_config.py: RunConfig; files.py: atomic writes
"""
