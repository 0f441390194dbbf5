"""Fit the kernel baseline on a data option's training pairs and write the kernel file.

    python -m degflow fit-kernel data=paired data.root=/path/to/pairs data.train_scales=[1,4] out=kernel.pt
    python -m degflow fit-kernel out=demo_kernel.pt                      # data=demo: kernels at x2 and x4

Arguments are Hydra overrides of ``conf/fit_kernel.yaml`` (``data`` is the data group of
training). Only the option's training split is read, at its training scales > 1. The file
(sha256-verified at every load, with the pairs' fingerprint and the fit's statistics) is what
``synthesize.py baseline=kernel|kernel_noise kernel_file=...`` and ``python -m degflow.evaluate
methods=[...,kernel,kernel_noise] kernel_file=...`` read. Rule and measurements:
docs/KERNEL_BASELINE.md. Exit status 0, or 2 with one ``error:`` line for bad settings or data.
"""

from __future__ import annotations

from degflow.cli.app import compose, run_tool

__all__ = ["main"]


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from omegaconf import OmegaConf

    from degflow.baselines.kernel_baseline import save_kernel_file
    from degflow.data.kernel_fit import bundle_pairs, kernel_baseline
    from degflow.data.options import build_data, option_of_target
    from degflow.infra.cluster import set_threads

    cfg = compose("fit_kernel", argv, job_name="fit_kernel")
    if OmegaConf.is_missing(cfg, "out"):
        raise ValueError("out: give the kernel file to write: python -m degflow fit-kernel data=... out=kernel.pt")
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)   # a missing data.root: the option says so
    set_threads(c["threads"])
    data_settings = dict(c["data"])
    bundle = build_data(option_of_target(data_settings.pop("_target_", "")), **data_settings)
    model = kernel_baseline(bundle_pairs(bundle), bundle.description, support_lr=float(c["support_lr"]),
                            ridge=float(c["ridge"]))
    digest = save_kernel_file(c["out"], model)
    fit = model.provenance["fit"]
    print(f"kernel file: {c['out']} (sha256 {digest[:12]}), fitted on {model.provenance['data']['images']} training "
          f"images at {', '.join('x' + k for k in fit['train_psnr_y_true_size'])}; training Y-PSNR at true LR size "
          + ", ".join(f"x{k} {v:.2f} dB" for k, v in fit["train_psnr_y_true_size"].items()), flush=True)
    return 0


def cli() -> None:
    run_tool(main)


if __name__ == "__main__":
    cli()
