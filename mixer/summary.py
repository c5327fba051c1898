"""One-screen text summary of a validated manifest (what `mixer validate` prints)."""

from __future__ import annotations

from mixer.manifest import Manifest, StageConfig


def planned_size(st: StageConfig) -> str:
    """A stage's size as validate can know it: steps when the manifest fixes them, else what the plan will fix.

    A `steps` stage plans steps × global_batch sequences, exactly the contract's steps; a `tokens` or `epochs`
    stage gets its step count from the plan's packing, which `mixer build` and `mixer inspect` print.
    """
    if st.size.steps is not None:
        return f"{st.size.steps} steps"
    if st.size.tokens is not None:
        return f"{st.size.tokens} tokens (steps: from the plan, see mixer build)"
    return f"{st.size.epochs} epochs (steps: from the plan, see mixer build)"


def manifest_summary(m: Manifest) -> str:
    lines = [f"manifest {m.name}: {len(m.sources)} sources, {len(m.stages)} stages, output {m.output}", "sources:"]
    width = max(len(n) for n in m.sources)
    for name, src in m.sources.items():
        files = f"{len(src.paths)} path{'s' * (len(src.paths) != 1)}"
        lines.append(f"  {name:<{width}}  {src.kind:<13} task={src.task_tag:<12} {files}")
    lines.append("stages:")
    for i, st in enumerate(m.stages, 1):
        size = planned_size(st)
        n_img = m.model.image_tokens_for(st.image_size)
        lines.append(
            f"  {i}. {st.name}: {size} of {st.global_batch} seq x {st.seq_len} tok, template={st.template}, "
            f"image={st.image_size}px ({n_img} tokens), trains={'+'.join(st.trains)}, lr={st.optimizer.lr:g}"
        )
        shares = ", ".join(f"{k} {v:.1%}" for k, v in st.shares.items())
        lines.append(f"     shares by {st.weight_by}: {shares}")
    ds = m.deepspeed
    lines.append(
        f"deepspeed: {'config ' + ds.config if ds.config else f'ZeRO-{ds.zero_stage}'}"
        f"{', bf16' if ds.bf16 else ''}{', grad checkpointing' if ds.gradient_checkpointing else ''}"
    )
    if m.ablations:
        lines.append("ablations: " + ", ".join(f"{n} (stage {a.stage})" for n, a in m.ablations.items()))
    return "\n".join(lines)
