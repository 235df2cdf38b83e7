"""dpflows: differentially private population flows and traffic patterns from mobility data.

The library knows nothing of HTTP. The privacy model is fixed in ../shared/design.md; in short:
the privacy unit is one person within one time window, each person's contribution is bounded
at ingestion, noise comes only from OpenDP (see mechanisms.py), and every release is charged
to an exact ledger before it leaves the process.
"""

__version__ = "0.1.0"
