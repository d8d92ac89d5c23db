from alignkit.infra.logging import CompletionLog, PhaseTimer, RunLogger, plot_metrics, progress, read_metrics
from alignkit.infra.seeding import rng_state, seed_everything, set_rng_state

__all__ = ["CompletionLog", "PhaseTimer", "RunLogger", "plot_metrics", "progress", "read_metrics", "rng_state", "seed_everything", "set_rng_state"]
