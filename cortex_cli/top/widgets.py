"""The dashboard's widgets: device memory bars per node, and the confirmation dialog."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from cortex_cli.render import memory_bar


class NodesPanel(Static):
    """One line per device: node, health, memory bar, utilisation."""

    plain = ""  # the text shown, for tests and screen readers

    def show(self, status: dict | None, unreachable: str | None) -> None:
        lines = []
        if unreachable:
            lines.append(Text(f"gateway unreachable: {unreachable} (retrying)", style="bold red"))
        for node in (status or {}).get("nodes", []):
            if not node["healthy"]:
                health = Text(" down ", style="bold white on red")
            elif node.get("draining"):
                health = Text(f" draining, {node.get('in_flight', 0)} in flight ", style="bold black on yellow")
            else:
                health = Text(" up ", style="bold black on green")
            head = Text(f"{node['name']:<12}") + health + Text(f"  {node['endpoint']}", style="dim")
            if not node["healthy"] and node.get("last_error"):
                head += Text(f"  {node['last_error'][:60]}", style="red")
            lines.append(head)
            for dev in node.get("devices", []):
                util = dev.get("utilization")
                util_text = Text(f"  util {util:.0f}%" if util is not None else "", style="cyan")
                lines.append(Text(f"   {dev['id']:<8}") + memory_bar(dev.get("used_mb", 0), dev.get("total_mb", 0),
                                                                      24) + util_text)
        lines = lines or [Text("no nodes", style="dim")]
        self.plain = "\n".join(line.plain for line in lines)
        self.update(Group(*lines))


class ConfirmScreen(ModalScreen[bool]):
    """Yes / no before anything that changes the fleet."""

    BINDINGS = [("y", "answer(True)", "Yes"), ("n", "answer(False)", "No"), ("escape", "answer(False)", "No")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Grid(id="confirm"):
            yield Label(self.question, id="question", markup=False)
            yield Button("Yes (y)", variant="error", id="yes")
            yield Button("No (n)", variant="primary", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)
