"""Where the contrast tables come from: MR signal equations on typical 3 T relaxation times.

``python -m bigl.phantom.relaxation`` prints each sequence's signal of every tissue relative
to white matter beside the table in :mod:`bigl.phantom.contrast`. The T1 and T1ce columns of
that table are the MPRAGE signal, the T2 column the TSE signal, rounded (the vessel row, a flow
void or a vessel's enhancement, set by hand); the FLAIR column is a milder version of its
signal. The spin-echo T1 and T1ce printed beside them are ``SPIN_ECHO_MEANS`` there, the other kind of T1
scan a case can be moved towards (``PhantomConfig.t1_spin_echo``; docs/phantom.md).
"""

from __future__ import annotations

import numpy as np

from bigl.phantom.anatomy import Tissue
from bigl.phantom.contrast import TISSUE_MEANS

# (T1 ms, T2 ms, proton density) at 3 T; the enhancing tumour before contrast.
RELAXATION: dict[Tissue, tuple[float, float, float]] = {
    Tissue.CSF: (4000.0, 2000.0, 1.00),
    Tissue.GM: (1330.0, 99.0, 0.80),
    Tissue.WM: (830.0, 69.0, 0.69),
    Tissue.DEEP_GM: (1100.0, 75.0, 0.75),
    Tissue.EDEMA: (1800.0, 180.0, 0.86),
    Tissue.NECROSIS: (3000.0, 400.0, 0.95),
    Tissue.NET: (1600.0, 140.0, 0.85),
    Tissue.ENHANCING: (1500.0, 120.0, 0.84),
}
GADOLINIUM_MM = 0.3  # contrast agent in the enhancing tumour (mmol/l); r1 = 4 /mM/s at 3 T
R1_PER_MM_MS = 4.0e-3


def spin_echo(t1: float, t2: float, pd: float, tr: float = 5000.0, te: float = 100.0) -> float:
    """Spin echo, PD (1 - exp(-TR/T1)) exp(-TE/T2): T2-weighted with the defaults (a TSE), T1-weighted at TR 500 /
    TE 12 ms."""
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def spin_echo_t1(t1: float, t2: float, pd: float) -> float:
    return spin_echo(t1, t2, pd, tr=500.0, te=12.0)


def flair(t1: float, t2: float, pd: float, ti: float = 2500.0, tr: float = 9000.0, te: float = 120.0) -> float:
    """Fluid-attenuated inversion recovery, magnitude: PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)."""
    return pd * abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def mprage(t1: float, t2: float, pd: float, tr: float = 2300.0, ti: float = 900.0, flip_deg: float = 9.0,
           echoes: int = 176, spacing: float = 7.1) -> float:
    """3D MPRAGE (ADNI-like protocol): inversion, then a train of small-flip readouts centred on TI.

    The longitudinal magnetisation is followed pulse by pulse until it reaches its steady
    state over repetitions; the signal is that of the centre echo (TE ~3 ms: no T2 weight).
    """
    cos_a, sin_a = np.cos(np.deg2rad(flip_deg)), np.sin(np.deg2rad(flip_deg))
    start = ti - echoes / 2 * spacing
    mz, signal = 0.0, 0.0
    for _ in range(30):  # repetitions until steady state
        mz = 1.0 - (1.0 + mz) * np.exp(-start / t1)  # inverted, then recovering to the train
        for k in range(echoes):
            if k == echoes // 2:
                signal = mz * sin_a
            mz = 1.0 - (1.0 - mz * cos_a) * np.exp(-spacing / t1)
        mz = 1.0 - (1.0 - mz) * np.exp(-(tr - start - echoes * spacing) / t1)
    return pd * abs(signal)


def physical_tables() -> dict[str, dict[Tissue, float]]:
    """Each sequence's signal of every tissue in RELAXATION, relative to white matter."""
    def column(signal, contrast_agent: bool = False):
        values = {}
        for k, (t1, t2, pd) in RELAXATION.items():
            if contrast_agent and k == Tissue.ENHANCING:
                t1 = 1.0 / (1.0 / t1 + R1_PER_MM_MS * GADOLINIUM_MM)
            values[k] = signal(t1, t2, pd)
        return {k: v / values[Tissue.WM] for k, v in values.items()}

    return {"t1": column(mprage), "t1ce": column(mprage, contrast_agent=True), "t2": column(spin_echo),
            "flair": column(flair), "t1 spin echo": column(spin_echo_t1),
            "t1ce spin echo": column(spin_echo_t1, contrast_agent=True)}


def main() -> None:
    tables = physical_tables()
    print("tissue        " + "  ".join(f"{s:>12}" for s in TISSUE_MEANS) + "   (signal / table)"
          + "".join(f"  {s:>12}" for s in tables if s not in TISSUE_MEANS))
    for k in RELAXATION:
        print(f"{k.name.lower():<13} "
              + "  ".join(f"{tables[s][k]:5.2f} / {TISSUE_MEANS[s][k]:4.2f}" for s in TISSUE_MEANS)
              + "".join(f"  {tables[s][k]:12.2f}" for s in tables if s not in TISSUE_MEANS))


if __name__ == "__main__":
    main()
