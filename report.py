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
from matplotlib.patches import FancyBboxPatch, Rectangle

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
    _cards(figure, data)
    _bar_chart(figure, data)
    _win_share(figure, data)
    figure.text(0.08, 0.04, f"Generated {now:%Y-%m-%d %H:%M:%S} UTC", color=MUTED, fontsize=9)
    buffer = io.BytesIO()
    FigureCanvasPdf(figure).print_pdf(buffer, metadata={
        "Title": f"Game statistics of {data.username}", "Creator": "stats-api",
        "CreationDate": now})
    return buffer.getvalue()


def _header(figure, data):
    figure.add_artist(Rectangle((0, 0.87), 1, 0.13, transform=figure.transFigure,
                                facecolor=INK, edgecolor="none"))
    figure.text(0.08, 0.925, data.username, fontsize=28, fontweight="bold", color="white")
    figure.text(0.08, 0.895, "Game statistics report", fontsize=12, color="#cbd2d9")
    figure.text(0.08, 0.83, f"Email: {data.email or 'not given'}", fontsize=11, color=INK)
    figure.text(0.08, 0.805, f"Gender: {data.gender or 'not given'}", fontsize=11, color=INK)


def _cards(figure, data):
    rate = win_rate(data.victory_count, data.loss_count)
    cards = [("Victories", f"{data.victory_count:,}", WIN),
             ("Losses", f"{data.loss_count:,}", LOSS),
             ("Sessions", f"{data.session_count:,}", INK),
             ("Total time", hours_and_minutes(data.total_time), INK),
             ("Games played", f"{data.victory_count + data.loss_count:,}", INK),
             ("Win rate", "no games yet" if rate is None else f"{rate:.1%}", INK)]
    width, gap, height = 0.84, 0.012, 0.085
    card_width = (width - gap * 2) / 3
    for index, (label, value, color) in enumerate(cards):
        row, column = divmod(index, 3)
        x, y = 0.08 + column * (card_width + gap), 0.66 - row * (height + gap)
        figure.add_artist(FancyBboxPatch((x, y), card_width, height,
                                         boxstyle="round,pad=0,rounding_size=0.008",
                                         transform=figure.transFigure,
                                         facecolor=PANEL, edgecolor="none"))
        figure.text(x + 0.02, y + 0.055, label, fontsize=10, color=MUTED)
        figure.text(x + 0.02, y + 0.018, value, fontsize=17, fontweight="bold", color=color)


def _bar_chart(figure, data):
    axes = figure.add_axes((0.08, 0.12, 0.46, 0.33))
    counts = [data.victory_count, data.loss_count]
    bars = axes.bar(["Victories", "Losses"], counts, color=[WIN, LOSS], width=0.6)
    axes.bar_label(bars, labels=[f"{count:,}" for count in counts], padding=4,
                   fontsize=11, color=INK)
    figure.text(0.08, 0.47, "Victories against losses", fontsize=13, color=INK)
    axes.set_ylim(0, max(counts + [1]) * 1.15)
    axes.set_yticks([])
    axes.spines[["top", "right", "left"]].set_visible(False)
    axes.tick_params(colors=MUTED, labelsize=11, length=0)


def _win_share(figure, data):
    axes = figure.add_axes((0.6, 0.12, 0.32, 0.33))
    figure.text(0.6, 0.47, "Share of games won", fontsize=13, color=INK)
    games = data.victory_count + data.loss_count
    shares, colors = ([data.victory_count, data.loss_count], [WIN, LOSS]) if games else ([1], [PANEL])
    axes.pie(shares, colors=colors, startangle=90, counterclock=False,
             wedgeprops={"width": 0.32, "edgecolor": "white"})
    rate = win_rate(data.victory_count, data.loss_count)
    axes.text(0, 0, "-" if rate is None else f"{rate:.0%}", ha="center", va="center",
              fontsize=20, fontweight="bold", color=INK)
