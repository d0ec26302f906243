"""The variants of a data-mixture experiment (``fmforge datamix``): what each one
changes in the base config, and the config the winner writes.

A variant is the base config with dotted overrides (``--try KEY=V1,V2``: one
variant per value), without one source (``--ablate-sources``), or with one
source's weight halved or doubled (``--weights-grid``). Only the data may differ:
the tokenizer stays the base run's and the proxy model's size is the
experiment's, so ``tokenizer.*``, ``model.*``, ``name`` and ``out_dir`` cannot be
tried.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from fmforge.config import ConfigError, RunConfig, apply_overrides, config_from_dict, parse_override
from fmforge.errors import UserError
from fmforge.rundir import atomic_write_text

# The weights grid: each source's weight times these, one source at a time.
WEIGHT_FACTORS = (0.5, 2.0)
# What a variant may change: the data, and the seed (the data's draws and the
# proxies' initialisation and order).
TRIABLE = ("data.", "seed")


class DatamixError(UserError, ValueError):
    """An experiment that cannot run as asked: a --try key that is not a data key
    or not in the config, too few sources to ablate, too few seeds, a target that
    does not exist; the message names the option or key."""


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # base | try | ablate | weights
    overrides: tuple[str, ...] = ()
    removed_source: str | None = None

    @property
    def dirname(self) -> str:
        """The variant's directory under ``RUN/datamix/``: its name, made safe."""
        safe = re.sub(r"[^A-Za-z0-9._=+-]", "_", self.name)
        if safe != self.name or len(safe) > 80:
            safe = f"{safe[:60]}-{hashlib.sha256(self.name.encode()).hexdigest()[:8]}"
        return safe


BASE = Variant("base", "base")


def split_values(text: str) -> list[str]:
    """``"0.5,1,[a, b]"`` -> ``["0.5", "1", "[a, b]"]``: commas inside brackets,
    braces or quotes do not split."""
    out, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_try(text: str) -> list[Variant]:
    """``--try data.sources.1.weight=0.5,1,2``: one variant per value."""
    if "=" not in text:
        raise DatamixError(f"--try {text!r}: write KEY=VALUE[,VALUE...], e.g. data.sources.1.weight=0.5,2")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not (key == "seed" or key.startswith("data.")):
        raise DatamixError(
            f"--try {text!r}: {key!r} is not a data key. datamix compares data: the tokenizer stays the base "
            "run's and the proxy's size is --size, so only data.* keys (and seed) can be tried")
    values = split_values(raw)
    if not all(values):
        raise DatamixError(f"--try {text!r}: an empty value; separate values with commas, e.g. {key}=0.5,2")
    variants = []
    for v in values:
        override = f"{key}={v}"
        parse_override(override)  # a value that is not YAML is named here
        variants.append(Variant(override, "try", (override,)))
    return variants


def ablations(cfg: RunConfig, only: Sequence[str] = ()) -> list[Variant]:
    """The mixture without each source in turn (or without each of ``only``)."""
    names = [s.name for s in cfg.data.sources]
    if len(names) < 2:
        raise DatamixError(f"--ablate-sources leaves out each source in turn; the config has "
                           f"{len(names)} source ({', '.join(names)}): add sources to compare")
    unknown = [n for n in only if n not in names]
    if unknown:
        raise DatamixError(f"--without {', '.join(unknown)}: no such source; the config's sources are "
                           f"{', '.join(names)}")
    return [Variant(f"without-{n}", "ablate", removed_source=n) for n in (only or names)]


def weights_grid(cfg: RunConfig, factors: Sequence[float] = WEIGHT_FACTORS) -> list[Variant]:
    """Each source's weight times each of ``factors``, one source at a time."""
    if cfg.data.token_budget is not None:
        raise DatamixError("--weights-grid varies the sources' weights; this config mixes by share of "
                           "data.total_tokens: try shares with --try data.sources.N.share=... (they must "
                           "still sum to 1, so change two at once in a datamix: section instead)")
    out = []
    for i, s in enumerate(cfg.data.sources):
        for f in factors:
            w = round(s.weight * f, 6)
            out.append(Variant(f"{s.name}.weight={w:g}", "weights", (f"data.sources.{i}.weight={w:g}",)))
    return out


def apply_to_raw(raw: dict[str, Any], variant: Variant) -> dict[str, Any]:
    """The variant's changes applied to a config as a plain dict."""
    out = apply_overrides(raw, list(variant.overrides))
    if variant.removed_source is not None:
        out = copy.deepcopy(out)
        out["data"]["sources"] = [s for s in out["data"]["sources"] if s["name"] != variant.removed_source]
    return out


def variant_config(cfg: RunConfig, variant: Variant) -> RunConfig:
    """The base config with the variant's changes, validated; a bad key or value
    is a ``DatamixError`` naming the variant and the key."""
    raw = cfg.model_dump(mode="json")
    if cfg.model.auto:  # sized already: keep the sizes, not `auto`
        raw["model"].pop("auto", None)
    try:
        return config_from_dict(apply_to_raw(raw, variant), cfg.config_dir)
    except ConfigError as exc:
        text = str(exc).replace("invalid configuration in config:", "invalid configuration:")
        raise DatamixError(f"variant {variant.name!r} ({_describe(variant)}): {text}") from None


def _describe(variant: Variant) -> str:
    if variant.removed_source is not None:
        return f"the config without source {variant.removed_source!r}"
    return "--try " + " ".join(variant.overrides)


def unique(cfg: RunConfig, variants: Sequence[Variant]) -> tuple[list[Variant], list[str]]:
    """``variants`` less those whose config is the base's or an earlier variant's
    (a --try value equal to the base's), with a note for each one left out."""
    seen = {_config_key(cfg): "base"}
    kept, notes = [], []
    names = set()
    for v in variants:
        if v.name in names:
            continue
        names.add(v.name)
        key = _config_key(variant_config(cfg, v))
        if key in seen:
            notes.append(f"variant {v.name!r} is the same config as {seen[key]!r}: left out")
            continue
        seen[key] = v.name
        kept.append(v)
    return kept, notes


def _config_key(cfg: RunConfig) -> str:
    return hashlib.sha256(cfg.to_yaml().encode()).hexdigest()


# ------------------------------------------------------------------ --write-best


def write_best(config_path: Path, user_overrides: Sequence[str], variant: Variant | None, out: Path,
               comment: Sequence[str]) -> None:
    """The user's config file with their command-line overrides and the winning
    variant's changes (none: the config unchanged), as YAML under a comment
    saying where it came from; atomically. Relative source paths are rewritten
    for ``out``'s directory, so the written config reads the same files."""
    with open(config_path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    raw = apply_overrides(raw, list(user_overrides))
    if variant is not None:
        raw = apply_to_raw(raw, variant)
    _rebase_paths(raw, config_path.resolve().parent, out.resolve().parent)
    text = "".join(f"# {line}\n" if line else "#\n" for line in comment)
    text += yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)


def _rebase_paths(raw: dict[str, Any], src: Path, dst: Path) -> None:
    if src == dst:
        return

    def rebase(p: str) -> str:
        p = p.replace("{config_dir}", str(src))
        if p.startswith(("{", "~")) or os.path.isabs(p) or "://" in p:
            return p
        return os.path.relpath(os.path.join(src, p), dst)

    for s in (raw.get("data") or {}).get("sources", []):
        s["paths"] = [rebase(p) for p in s.get("paths", [])]
    tok = raw.get("tokenizer") or {}
    if tok.get("path"):
        tok["path"] = rebase(tok["path"])


def best_comment(command: str, target: str, best: dict[str, Any] | None, base_bpb: float,
                 threshold: float, seeds: int) -> list[str]:
    """The comment ``--write-best`` puts above the config: the experiment and its evidence."""
    lines = [f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}",
             f"(fmforge datamix; target: {target}; {seeds} seeds per variant; a difference is called "
             f"beyond {threshold:.4f} bits/byte)."]
    if best is None:
        lines += ["No variant beat the base config beyond the seed noise: this is the base config",
                  f"unchanged (base: {base_bpb:.4f} bits/byte on the target)."]
    else:
        lines += [f"Winner: {best['name']}: {best['bits_per_byte']:.4f} bits/byte against the base's "
                  f"{base_bpb:.4f}",
                  f"({best['delta']:+.4f}, {best['delta_over_noise']:.1f}x the seed noise)."]
    return lines


@dataclass
class VariantSet:
    """The experiment's variants, base first."""

    variants: list[Variant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def collect(cfg: RunConfig, tries: Sequence[str], ablate: bool, grid: bool,
            extra: Sequence[Variant] = (), without: Sequence[str] = ()) -> VariantSet:
    """Base, then the --try variants, the ablations (every source, or those in
    ``without``) and the weights grid, each config validated and duplicates of the
    base (or of each other) left out."""
    found: list[Variant] = []
    for t in tries:
        found += parse_try(t)
    found += list(extra)
    if ablate or without:
        found += ablations(cfg, () if ablate else without)
    if grid:
        found += weights_grid(cfg)
    if not found:
        raise DatamixError("nothing to compare: give --try KEY=V1,V2, --ablate-sources (or --without NAME) or "
                           "--weights-grid "
                           "(or a datamix: section with variants)")
    kept, notes = unique(cfg, found)
    if not kept:
        raise DatamixError("every variant asked for is the base config itself: " + "; ".join(notes))
    return VariantSet([BASE, *kept], notes)
