"""python -m bksdm.arch teacher=sd14 arch=tiny: what a student keeps and removes, params and MACs per unit."""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from bksdm.cli import ConfigError, app, config_checks
from bksdm.cli.help import EntryHelp

FORMATS = ("table", "json")


HELP = EntryHelp(
    command="python -m bksdm.arch",
    summary="What a student keeps and removes of its teacher's U-Net (or of a FLUX, SD3 or PixArt transformer's\n"
    "blocks), with parameters and MACs per unit (configs only: no weights are loaded).",
    settings=("resolution", "format"),
    examples=("python -m bksdm.arch teacher=sd14 arch=tiny", "python -m bksdm.arch teacher=sd21base format=json",
              "python -m bksdm.arch teacher=sdxl arch=ssd_1b", "python -m bksdm.arch teacher=flux_dev arch=flux_mini"),
    more="Manual: docs/architecture.md",
)  # fmt: skip


@app("arch_report", HELP)
def main(cfg: DictConfig) -> None:
    # here, not at the top: --help and --cfg job need neither torch nor diffusers
    from bksdm.arch.depth import is_transformer
    from bksdm.arch.report import render_report, report_dict
    from bksdm.cli.train_setup import teacher_config, teacher_vae_scale

    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is not accepted: use one of {list(FORMATS)}")
    with config_checks():  # an unbuilt mini-world teacher's folder is said in one line
        teacher = teacher_config(cfg)
        scale = teacher_vae_scale(cfg)
    if not isinstance(cfg.resolution, int) or cfg.resolution % scale:
        raise ConfigError(
            f"resolution={cfg.resolution!r} must be a pixel size divisible by {scale} (teacher="
            f"{cfg.teacher.name}'s VAE factor)"
        )
    removal = OmegaConf.to_container(cfg.arch.removal, resolve=True)
    latent = cfg.resolution // scale
    if is_transformer(teacher):
        from bksdm.arch.depth_report import depth_report_dict, render_depth_report

        if latent % 2:
            raise ConfigError(
                f"resolution={cfg.resolution!r}: a transformer's 2x2 patches need a multiple of 16"
            )
        try:
            if cfg.format == "json":
                report = {"teacher": cfg.teacher.name, "resolution": cfg.resolution,
                          **depth_report_dict(teacher, removal, latent, cfg.arch.name)}  # fmt: skip
                print(json.dumps(report))
            else:
                title = f"{cfg.teacher.name} ({cfg.teacher.source}), {cfg.resolution} px"
                print(render_depth_report(teacher, removal, latent, title, cfg.arch.name))
        except ValueError as error:
            raise ConfigError(
                f"arch={cfg.arch.name} does not fit teacher={cfg.teacher.name}: {error}"
            ) from error
        return
    if cfg.format == "json":
        print(
            json.dumps(
                {
                    "teacher": cfg.teacher.name,
                    "resolution": cfg.resolution,
                    **report_dict(teacher, removal, latent, cfg.arch.name),
                }
            )
        )
    else:
        title = f"{cfg.teacher.name} ({cfg.teacher.source}), {cfg.resolution} px"
        print(render_report(teacher, removal, latent, title, cfg.arch.name))


if __name__ == "__main__":
    main()
