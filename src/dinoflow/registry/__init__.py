"""The MLflow model registry side of dinoflow: the gate, the evidence it reads, lineage, model cards.

The stage is `dinoflow.registry.family.register` (`dinoflow register`: one student, or each student of
a family through `dinoflow.registry.stage.register`); see `gate` for the rule
that moves the `champion` alias and `evidence` for the check that ties eval.json to the file.
"""

from dinoflow.registry.evidence import EvalEvidence, EvaluationMismatch, check_evaluated, read_eval_report
from dinoflow.registry.family import register
from dinoflow.registry.gate import Champion, gate_verdict

__all__ = [
    "Champion",
    "EvalEvidence",
    "EvaluationMismatch",
    "check_evaluated",
    "gate_verdict",
    "read_eval_report",
    "register",
]
