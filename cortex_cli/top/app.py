"""The `cortex top` application. `make_top_app` is shared by the command and the tests."""

from __future__ import annotations

from textual import work
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Footer, Header, Input, RichLog

from cortex_cli.client import AdminClient, AdminError, GatewayUnreachable
from cortex_cli.top.data import (
    COLUMNS,
    KEY_COLUMNS,
    SORT_KEYS,
    Row,
    event_line,
    filter_rows,
    format_row,
    key_rows,
    rows_from_status,
    sort_rows,
)
from cortex_cli.top.widgets import ConfirmScreen, NodesPanel


class TopApp(App):
    CSS_PATH = "top.tcss"
    TITLE = "cortex top"
    BINDINGS = [
        ("q", "quit", "Quit"),
        ("s", "cycle_sort", "Sort"),
        ("slash", "filter", "Filter"),
        ("l", "load", "Load"),
        ("u", "unload", "Unload"),
        ("p", "toggle_pin", "Pin/unpin"),
        ("r", "refresh_now", "Refresh"),
    ]

    def __init__(self, url: str, key: str | None, interval: float):
        super().__init__()
        self.url, self.key, self.interval = url, key, interval
        self.status: dict | None = None
        self.usage: dict | None = None  # /admin/usage: the keys' rows; None without keys (or an older gateway)
        self.unreachable: str | None = None
        self.sort_key = "model"
        self.filter_text = ""
        self.rows: list[Row] = []
        self.seen_events: set[tuple] = set()

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        yield NodesPanel(id="nodes")
        yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="keys", cursor_type="none", zebra_stripes=True)
        yield RichLog(id="events", max_lines=200)
        yield Input(placeholder="filter by model, node or status; enter to apply", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#models", DataTable).add_columns(*COLUMNS)
        self.query_one("#keys", DataTable).add_columns(*KEY_COLUMNS)
        self.refresh_data()
        self.set_interval(self.interval, self.refresh_data)

    # -- data ----------------------------------------------------------------------
    def client(self) -> AdminClient:
        return AdminClient(self.url, self.key)

    @work(exclusive=True)
    async def refresh_data(self) -> None:
        try:
            async with self.client() as client:
                self.status = await client.status(timeout=max(1.0, self.interval * 2))
                self.usage = await self._usage(client)
            self.unreachable = None
        except (GatewayUnreachable, AdminError) as exc:
            # Keep the last picture and say so: a restarting gateway must not kill the dashboard.
            self.unreachable = str(exc).split(";")[0]
        self.redraw()

    async def _usage(self, client: AdminClient) -> dict | None:
        """The keys' usage; None where the gateway cannot say (no such route, its database unreachable)."""
        try:
            return await client._call("GET", "/admin/usage", timeout=max(1.0, self.interval * 2))
        except AdminError:
            return None

    def redraw_keys(self) -> None:
        rows = key_rows(self.usage) if self.usage else []
        table = self.query_one("#keys", DataTable)
        table.set_class(bool(rows), "visible")  # no keys, no panel
        table.clear()
        for row in rows:
            table.add_row(*row)

    def redraw(self) -> None:
        self.query_one(NodesPanel).show(self.status, self.unreachable)
        self.sub_title = f"{self.url}  sort: {self.sort_key}" + (f"  filter: {self.filter_text}" if self.filter_text
                                                                 else "")
        if self.status is None:
            return
        self.redraw_keys()
        table = self.query_one("#models", DataTable)
        selected = self.selected()
        self.rows = sort_rows(filter_rows(rows_from_status(self.status), self.filter_text), self.sort_key)
        table.clear()
        for row in self.rows:
            table.add_row(*format_row(row), key=row.key)
        if selected is not None:
            keys = [r.key for r in self.rows]
            if selected.key in keys:
                table.move_cursor(row=keys.index(selected.key))
        log = self.query_one(RichLog)
        for event in self.status.get("events", []):
            ident = (event.get("time"), event.get("kind"), event.get("node"), event.get("model"))
            if ident not in self.seen_events:
                self.seen_events.add(ident)
                log.write(event_line(event))

    def selected(self) -> Row | None:
        table = self.query_one("#models", DataTable)
        if not self.rows or table.cursor_row is None or not 0 <= table.cursor_row < len(self.rows):
            return None
        return self.rows[table.cursor_row]

    # -- keys ----------------------------------------------------------------------
    def action_cycle_sort(self) -> None:
        self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
        self.redraw()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("visible")
        box.value = self.filter_text
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value
        event.input.remove_class("visible")
        self.query_one("#models", DataTable).focus()
        self.redraw()

    def action_refresh_now(self) -> None:
        self.refresh_data()

    def action_load(self) -> None:
        self._confirm_then("load", lambda c, r: c.load(r.node, r.model))

    def action_unload(self) -> None:
        self._confirm_then("unload", lambda c, r: c.unload(r.node, r.model))

    def action_toggle_pin(self) -> None:
        row = self.selected()
        verb = "unpin" if row and row.pinned else "pin"
        self._confirm_then(verb, lambda c, r: c.pin(r.node, r.model, not r.pinned))

    def _confirm_then(self, verb: str, call) -> None:
        row = self.selected()
        if row is None:
            self.notify("select a model first", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_action_on(verb, row, call)

        self.push_screen(ConfirmScreen(f"{verb} {row.model} on {row.node}?"), answered)

    @work(group="actions")
    async def run_action_on(self, verb: str, row: Row, call) -> None:
        self.notify(f"{verb} {row.model} on {row.node}...", markup=False)
        try:
            async with self.client() as client:
                await call(client, row)
        except (GatewayUnreachable, AdminError) as exc:
            self.notify(f"{verb} failed: {exc}", severity="error", timeout=8, markup=False)
        else:
            self.notify(f"{verb} {row.model} on {row.node}: done", markup=False)
        self.refresh_data()


def make_top_app(url: str, key: str | None = None, interval: float = 1.0) -> TopApp:
    return TopApp(url, key, interval)
