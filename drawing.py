"""A user's stats report: one A4 page drawn with matplotlib's PDF backend, by its
object API alone (never pyplot, which keeps global state and is not thread-safe)."""

import io
import logging
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from functools import cache

import matplotlib
from matplotlib import _afm
from matplotlib.backends import backend_pdf
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch, Rectangle, Wedge

# The PDF core fonts are built into every reader: nothing to embed, and the
# text stays text. They cover Latin-1 (cp1252) only: a report with other
# characters embeds DejaVu Sans instead (see render).
matplotlib.rcParams["font.family"] = "sans-serif"
CORE_FONTS = {"pdf.use14corefonts": True, "font.sans-serif": ["Helvetica"]}
EMBEDDED_FONTS = {"pdf.use14corefonts": False, "pdf.fonttype": 42, "font.sans-serif": "DejaVu Sans"}


@cache
def _parse_afm(path):
    with open(path, "rb") as file:
        return _afm.AFM(file)


# The PDF backend parses a core font's whole metrics file on every save only to read
# its name. Parsed once, a render takes 16.5-22.5 ms, not 33.6-42.4 (BENCHMARKS.md);
# test_pdf_report.ReportLibraryTest fails if a matplotlib upgrade makes this dead.
backend_pdf.AFM = lambda file: _parse_afm(file.name)
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
    return f"{hours} h {rest // 60:02d} min"


def render(data, now=None):
    """The report as PDF bytes."""
    now = now or datetime.now(UTC)
    try:
        "".join(str(value) for value in astuple(data)).encode("cp1252")
        fonts = CORE_FONTS
    except UnicodeEncodeError:
        fonts = EMBEDDED_FONTS
    # rc_context changes global settings: fine, as a worker renders one report at a time.
    with matplotlib.rc_context(fonts):
        figure = Figure(figsize=A4_INCHES)
        for draw in (_header, _cards, _bar_chart, _win_share):
            draw(figure, data)
        _text(figure, 0.08, 0.04, f"Generated {now:%Y-%m-%d %H:%M:%S} UTC", 9, color=MUTED)
        buffer = io.BytesIO()
        title = f"Game statistics of {data.username}"
        metadata = {"Title": title, "Creator": "stats-api", "CreationDate": now}
        backend_pdf.FigureCanvasPdf(figure).print_pdf(buffer, metadata=metadata)
    return buffer.getvalue()


def _text(figure, x, y, content, size, width=None, bold=False, **style):
    """Text exactly as given, shrunk to fit width (in figure fractions) if need be.
    No mathtext: a '$' in a user's email must stay a dollar sign."""
    weight = "bold" if bold else "normal"
    if width is not None:
        size = min(size, width * A4_INCHES[0] * 72 / _em_width(content, weight))
    return figure.text(x, y, content, fontsize=size, fontweight=weight, parse_math=False, **style)


@cache  # once per weight, not per text: a render 17.5 ms without, 14.4 with (7 interleaved)
def _helvetica(weight):
    return _parse_afm(findfont(FontProperties(family="Helvetica", weight=weight), fontext="afm"))


def _em_width(content, weight):
    """The width of content in ems of Helvetica; unknown characters count as one em."""
    metrics = _helvetica(weight)
    width = 0
    for character in content:
        try:
            width += metrics.get_width_char(ord(character))
        except KeyError:
            width += 1000
    return max(width, 1) / 1000


# Shapes are placed in figure fractions (add_artist's default transform) or, in the
# charts, in inches on the page (figure.dpi_scale_trans), as patches rather than in
# Axes: an Axes costs more than the rest of the page (ticks, locators, layout).
def _header(figure, data):
    figure.add_artist(Rectangle((0, 0.87), 1, 0.13, facecolor=INK, edgecolor="none"))
    _text(figure, 0.08, 0.925, data.username, 28, width=0.84, bold=True, color="white")
    _text(figure, 0.08, 0.895, "Game statistics report", 12, color="#cbd2d9")
    _text(figure, 0.08, 0.83, f"Email: {data.email or 'not given'}", 11, width=0.84, color=INK)
    _text(figure, 0.08, 0.805, f"Gender: {data.gender or 'not given'}", 11, width=0.84, color=INK)


def _cards(figure, data):
    rate = win_rate(data.victory_count, data.loss_count)
    cards = [
        ("Victories", f"{data.victory_count}", WIN),
        ("Losses", f"{data.loss_count}", LOSS),
        ("Sessions", f"{data.session_count}", INK),
        (f"Total time ({data.total_time} s)", hours_and_minutes(data.total_time), INK),
        ("Games played", f"{data.victory_count + data.loss_count}", INK),
        ("Win rate", "no games yet" if rate is None else f"{rate:.1%}", INK),
    ]
    width, gap, height = 0.84, 0.012, 0.085
    card_width = (width - gap * 2) / 3
    inside = card_width - 0.04
    for index, (label, value, color) in enumerate(cards):
        row, column = divmod(index, 3)
        x, y = 0.08 + column * (card_width + gap), 0.66 - row * (height + gap)
        card = FancyBboxPatch((x, y), card_width, height, "round,pad=0,rounding_size=0.008")
        figure.add_artist(card).set(facecolor=PANEL, edgecolor="none")
        _text(figure, x + 0.02, y + 0.055, label, 10, width=inside, color=MUTED)
        _text(figure, x + 0.02, y + 0.018, value, 17, width=inside, bold=True, color=color)


def _bar_chart(figure, data):
    _text(figure, 0.08, 0.47, "Victories against losses", 13, color=INK)
    inches = figure.dpi_scale_trans
    left, base, top, bar_width, gap = 0.66, 1.4, 4.9, 1.25, 0.45
    counts = ((data.victory_count, "Victories", WIN), (data.loss_count, "Losses", LOSS))
    tallest = max(data.victory_count, data.loss_count, 1)
    for index, (count, label, color) in enumerate(counts):
        x = left + 0.1 + index * (bar_width + gap)
        height = (top - base) * count / tallest
        bar = Rectangle((x, base), bar_width, height, transform=inches)
        figure.add_artist(bar).set(facecolor=color, edgecolor="none")
        center, fits = x + bar_width / 2, (bar_width + gap) / A4_INCHES[0]
        on_bar = {"transform": inches, "ha": "center"}
        _text(figure, center, base + height + 0.08, f"{count}", 11, fits, color=INK, **on_bar)
        _text(figure, center, base - 0.22, label, 11, color=MUTED, **on_bar)
    axis = Line2D([left, left + 0.2 + 2 * bar_width + gap], [base, base], transform=inches)
    figure.add_artist(axis).set(color=INK, linewidth=0.8)


def _win_share(figure, data):
    _text(figure, 0.6, 0.47, "Share of games won", 13, color=INK)
    inches = figure.dpi_scale_trans
    center, radius = (6.28, 3.2), 1.3
    games = data.victory_count + data.loss_count
    if games:  # clockwise from the top: victories first, then losses, parted by white
        won = 360 * data.victory_count / games
        wedges = [(90 - won, 90, WIN), (-270, 90 - won, LOSS)]
        edge = {"edgecolor": "white", "linewidth": 1.5}
    else:  # an empty ring
        wedges, edge = [(0, 360, PANEL)], {"edgecolor": "none"}
    for start, end, color in wedges:
        if end > start:
            wedge = Wedge(center, radius, start, end, width=0.42, transform=inches, facecolor=color)
            figure.add_artist(wedge).set(**edge)
    rate = win_rate(data.victory_count, data.loss_count)
    label, at_center = "-" if rate is None else f"{rate:.0%}", {"ha": "center", "va": "center"}
    _text(figure, *center, label, 20, bold=True, transform=inches, color=INK, **at_center)
