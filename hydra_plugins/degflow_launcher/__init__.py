"""degflow's Hydra launchers (found by Hydra's plugin discovery): see degflow_launcher.py."""
