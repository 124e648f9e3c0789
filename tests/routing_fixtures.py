"""A routing callable for tests: raises for component type D, else passes to det-passive."""


def route_or_raise(expert: str, label: str, fields: dict) -> list[str]:
    if fields["component_type"] == "D":
        raise RuntimeError("boom: this rule cannot route D")
    return ["det-passive"] if expert.startswith("cls-") and label == "pass" else []
