"""A user's stats report: one A4 page drawn with matplotlib's PDF backend.

Only matplotlib's object API is used (never pyplot, which keeps global state
and is not thread-safe), so reports can be drawn in any thread.
"""
import io
import logging
from dataclasses import astuple, dataclass
from datetime import datetime, timezone

import matplotlib
from matplotlib.backends.backend_pdf import FigureCanvasPdf
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

# The PDF core fonts are built into every reader: nothing to embed, and the
# text stays text. They cover Latin-1 (cp1252) only: a report with other
# characters embeds DejaVu Sans instead (see render).
CORE_FONTS = {"pdf.use14corefonts": True, "font.family": "sans-serif",
              "font.sans-serif": ["Helvetica"]}
EMBEDDED_FONTS = {"pdf.use14corefonts": False, "pdf.fonttype": 42,
                  "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"]}
matplotlib.rcParams.update(CORE_FONTS)
# Helvetica has no "normal" weight entry in matplotlib's list; say it once, not per text.
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)

A4_INCHES = (8.27, 11.69)
INK, MUTED, WIN, LOSS, PANEL = "#1f2933", "#616e7c", "#2f9e6e", "#d64545", "#f3f5f7"


@dataclass
class ReportData:
    username: str
    email: str | None
    gender: str | None
    victory_count: int
    loss_count: int
    session_count: int
    total_time: int  # seconds


def win_rate(victories, losses):
    games = victories + losses
    return victories / games if games else None


def hours_and_minutes(seconds):
    hours, rest = divmod(seconds, 3600)
    return f"{hours:,} h {rest // 60:02d} min"


def fits_core_fonts(data):
    try:
        "".join(str(value) for value in astuple(data)).encode("cp1252")
        return True
    except UnicodeEncodeError:
        return False


def render(data, now=None):
    """The report as PDF bytes."""
    if fits_core_fonts(data):
        return _render(data, now)
    # rc_context changes global settings: fine, as a worker renders one report at a time.
    with matplotlib.rc_context(EMBEDDED_FONTS):
        return _render(data, now)


def _render(data, now):
    now = now or datetime.now(timezone.utc)
    figure = Figure(figsize=A4_INCHES)
    _header(figure, data)
    _table(figure, data)
    _chart(figure, data)
    figure.text(0.08, 0.04, f"Generated {now:%Y-%m-%d %H:%M:%S} UTC", color=MUTED, fontsize=9)
    buffer = io.BytesIO()
    FigureCanvasPdf(figure).print_pdf(buffer, metadata={
        "Title": f"Game statistics of {data.username}", "Creator": "stats-api",
        "CreationDate": now})
    return buffer.getvalue()


def _header(figure, data):
    figure.text(0.08, 0.92, data.username, fontsize=28, fontweight="bold", color=INK)
    figure.text(0.08, 0.885, "Game statistics report", fontsize=12, color=MUTED)
    figure.text(0.08, 0.85, f"Email: {data.email or 'not given'}", fontsize=11, color=INK)
    figure.text(0.08, 0.83, f"Gender: {data.gender or 'not given'}", fontsize=11, color=INK)


def _table(figure, data):
    rate = win_rate(data.victory_count, data.loss_count)
    rows = [("Victories", f"{data.victory_count:,}"),
            ("Losses", f"{data.loss_count:,}"),
            ("Sessions", f"{data.session_count:,}"),
            ("Total time", hours_and_minutes(data.total_time)),
            ("Win rate", "no games yet" if rate is None else f"{rate:.1%}")]
    top, step = 0.76, 0.04
    figure.add_artist(FancyBboxPatch((0.08, top - step * len(rows) - 0.01), 0.84,
                                     step * len(rows) + 0.035, boxstyle="round,pad=0.005",
                                     transform=figure.transFigure, facecolor=PANEL,
                                     edgecolor="none"))
    for index, (label, value) in enumerate(rows):
        y = top - step * index
        figure.text(0.11, y, label, fontsize=13, color=MUTED)
        figure.text(0.89, y, value, fontsize=13, color=INK, fontweight="bold", ha="right")


def _chart(figure, data):
    axes = figure.add_axes((0.14, 0.12, 0.76, 0.38))
    counts = [data.victory_count, data.loss_count]
    bars = axes.bar(["Victories", "Losses"], counts, color=[WIN, LOSS], width=0.55)
    axes.bar_label(bars, labels=[f"{count:,}" for count in counts], padding=4,
                   fontsize=12, color=INK)
    axes.set_title("Victories against losses", fontsize=14, color=INK, loc="left", pad=14)
    axes.set_ylim(0, max(counts + [1]) * 1.15)
    axes.spines[["top", "right"]].set_visible(False)
    axes.tick_params(colors=MUTED, labelsize=11)
