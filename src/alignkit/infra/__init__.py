from alignkit.infra.logging import PhaseTimer, RunLogger, plot_metrics, progress, read_metrics
from alignkit.infra.seeding import rng_state, seed_everything, set_rng_state

__all__ = ["PhaseTimer", "RunLogger", "plot_metrics", "progress", "read_metrics", "rng_state", "seed_everything", "set_rng_state"]
