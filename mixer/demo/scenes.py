"""Synthetic demo content a tiny VLM can learn: coloured-shape scenes, signs, book covers, bar charts and documents.

Everything is drawn with Pillow from a `random.Random` the caller passes in, and text uses Pillow's built-in bitmap
font scaled up with nearest-neighbour resampling, so no font file is needed and the pixels are the same on every run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
BACKGROUNDS: dict[str, RGB] = {"white": (250, 250, 250), "grey": (170, 170, 170), "black": (25, 25, 25)}
SHAPES = ("circle", "square", "triangle")
# Centres as fractions of (width, height); 0.2/0.8 keeps neighbours apart even at the widest aspect ratio drawn.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.2, 0.5),
    "right": (0.8, 0.5),
    "top": (0.5, 0.2),
    "bottom": (0.5, 0.8),
    "centre": (0.5, 0.5),
}
PLACES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
PLACES["centre"] = "in the centre"
NUMBERS = ("zero", "one", "two", "three", "four", "five")
SIDES = (160, 192, 224, 256, 320, 384, 448, 512)
WORDS = (
    "APPLE BREAD CAKE CANDY CAT CLOUD COFFEE DOG DOOR EXIT FARM FISH FLOWER GARDEN HOTEL HOUSE JAZZ KING LAKE "
    "LEMON MILK MOON MUSIC NORTH OPEN PARK PIZZA RADIO RIVER ROSE SALE SCHOOL SHOP SNOW SOUTH STAR STOP SUN TAXI "
    "TEA TIGER TOWN TRAIN TREE WATER WIND WOLF ZOO"
).split()
FIRST_NAMES = "Anna Ben Carl Dora Emma Frank Grace Hugo Ida Jack Kate Leo".split()
SURNAMES = "Stone Hill Brook Wood Fox Lane Reed Gray Moss West".split()
# OCR-VQA genre names; the cover colour follows the genre so the genre question is answerable from the pixels.
GENRES: dict[str, str] = {
    "Cookbooks, Food & Wine": "orange",
    "Travel": "blue",
    "Romance": "purple",
    "Science & Math": "green",
    "Children's Books": "yellow",
    "Mystery, Thriller & Suspense": "red",
}

_FONT = ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else ImageFont.load_default()


@dataclass(frozen=True)
class Shape:
    """One shape of a scene: what it is, where it is, and its pixel bounding box."""

    kind: str
    colour: str
    position: str
    box: Box


@dataclass(frozen=True)
class Scene:
    """One to three shapes of distinct kinds, colours and positions on a plain background."""

    width: int
    height: int
    background: str
    shapes: tuple[Shape, ...]
    transparent: bool = False


def random_size(rng: random.Random) -> tuple[int, int]:
    """A width and height in 160–512 px: square 60% of the time, else up to 1.6:1 in either orientation."""
    long = rng.choice(SIDES)
    if rng.random() < 0.6:
        return long, long
    short = max(SIDES[0], round(long * rng.uniform(0.625, 0.9)))
    return (long, short) if rng.random() < 0.5 else (short, long)


def random_scene(rng: random.Random, transparent: bool = False, min_shapes: int = 1, square: bool = False) -> Scene:
    """A scene of `min_shapes`–3 shapes; `transparent` scenes have no background (drawn as RGBA with alpha 0)."""
    width, height = (rng.choice(SIDES),) * 2 if square else random_size(rng)
    n = rng.randint(min_shapes, 3)
    kinds, colours, places = rng.sample(SHAPES, n), rng.sample(list(COLOURS), n), rng.sample(list(POSITIONS), n)
    side = min(width, height)
    shapes = []
    for kind, colour, place in zip(kinds, colours, places, strict=True):
        fx, fy = POSITIONS[place]
        cx = round(width * (fx + rng.uniform(-0.02, 0.02)))
        cy = round(height * (fy + rng.uniform(-0.02, 0.02)))
        r = round(side * rng.uniform(0.09, 0.12))
        shapes.append(Shape(kind, colour, place, (cx - r, cy - r, cx + r, cy + r)))
    return Scene(width, height, rng.choice(list(BACKGROUNDS)), tuple(shapes), transparent)


def render_scene(scene: Scene) -> Image.Image:
    """The scene as an RGB image, or RGBA with a fully transparent background for transparent scenes."""
    if scene.transparent:
        img = Image.new("RGBA", (scene.width, scene.height), (0, 0, 0, 0))
    else:
        img = Image.new("RGB", (scene.width, scene.height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for shape in scene.shapes:
        fill = COLOURS[shape.colour] + ((255,) if scene.transparent else ())
        x0, y0, x1, y1 = shape.box
        if shape.kind == "circle":
            draw.ellipse(shape.box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(shape.box, fill=fill)
        else:
            draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return img


def grid_box(scene: Scene, shape: Shape) -> str:
    """The shape's box on MiniGPT-v2's 0–100 grid: `{<x1><y1><x2><y2>}`."""
    x0, y0, x1, y1 = shape.box
    sx, sy = 100 / scene.width, 100 / scene.height
    cells = [min(100, max(0, round(v))) for v in (x0 * sx, y0 * sy, x1 * sx, y1 * sy)]
    return "{" + "".join(f"<{c}>" for c in cells) + "}"


def _phrases(scene: Scene) -> list[str]:
    return [f"{s.colour} {s.kind} {PLACES[s.position]}" for s in scene.shapes]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _and(parts: list[str], sep: str = ", ", last: str = " and ") -> str:
    return parts[0] if len(parts) == 1 else sep.join(parts[:-1]) + last + parts[-1]


def _bg(scene: Scene) -> str:
    return "" if scene.transparent else f" on a {scene.background} background"


# One caption style per source family, so each source has its own voice and its own eval loss.
CAPTION_STYLES: dict[str, Callable[[Scene], str]] = {
    "laion": lambda s: _and([p[0].upper() + p[1:] for p in _phrases(s)], " | ", " | "),
    "cc3m": lambda s: _and([_a(p) for p in _phrases(s)]),
    "cc12m": lambda s: (_and([_a(p) for p in _phrases(s)], ", ", ", ") + _bg(s) + ".").capitalize(),
    "sbu": lambda s: "my " + _and(_phrases(s), ", ", " with "),
}


def caption(scene: Scene, style: str) -> str:
    """A one-line caption of the scene in a source family's style (a key of `CAPTION_STYLES`)."""
    return CAPTION_STYLES[style](scene)


def describe(scene: Scene) -> str:
    """A detailed description: how many shapes, the background, then one sentence per shape."""
    n = len(scene.shapes)
    head = f"The image shows {NUMBERS[n]} shape{'s' if n > 1 else ''}{_bg(scene)}."
    return " ".join([head] + [f"There is {_a(p)}." for p in _phrases(scene)])


def scene_questions(scene: Scene) -> list[tuple[str, str]]:
    """Every question the scene answers in one word, in a fixed order (the caller samples from them)."""
    qa = [("How many shapes are there?", NUMBERS[len(scene.shapes)])]
    if not scene.transparent:
        qa.append(("What colour is the background?", scene.background))
    for s in scene.shapes:
        qa += [
            (f"What colour is the {s.kind}?", s.colour),
            (f"Where is the {s.kind}?", s.position),
            (f"What shape is {PLACES[s.position]}?", s.kind),
        ]
    present = {s.kind for s in scene.shapes}
    qa += [(f"Is there a {kind}?", "yes" if kind in present else "no") for kind in SHAPES]
    return qa


def present_objects(scene: Scene) -> list[str]:
    """The scene's objects as POPE names them, one per shape: "red circle"."""
    return [f"{s.colour} {s.kind}" for s in scene.shapes]


def absent_objects(scene: Scene) -> list[str]:
    """Every colour-shape object not in the scene, in `COLOURS` × `SHAPES` order."""
    present = set(present_objects(scene))
    return [f"{c} {k}" for c in COLOURS for k in SHAPES if f"{c} {k}" not in present]


def swapped_objects(scene: Scene) -> list[str]:
    """Absent objects made of a colour and a shape that are both in the scene, bound differently.

    These are the hard negatives: a model that sees colours and shapes but not which goes with which says yes to them.
    """
    colours, kinds = {s.colour for s in scene.shapes}, {s.kind for s in scene.shapes}
    return [o for o in absent_objects(scene) if o.split()[0] in colours and o.split()[1] in kinds]


def is_there(obj: str) -> str:
    """POPE's question about one object."""
    return f"Is there {_a(obj)} in the image?"


def draw_text(img: Image.Image, text: str, xy: tuple[int, int], scale: int, fill: tuple[int, ...] | int) -> None:
    """Draw `text` with its top-left corner at `xy`, the bitmap font magnified `scale` times."""
    w, h = text_size(text, scale)
    mask = Image.new("L", (w // scale, h // scale), 0)
    ImageDraw.Draw(mask).text((0, 0), text, font=_FONT, fill=255)
    img.paste(fill, (*xy, xy[0] + w, xy[1] + h), mask.resize((w, h), Image.Resampling.NEAREST))


def text_size(text: str, scale: int) -> tuple[int, int]:
    """Width and height in pixels of `text` drawn by `draw_text` at `scale`."""
    x0, _, x1, y1 = _FONT.getbbox(text)
    return (x1 - x0) * scale, y1 * scale


@dataclass(frozen=True)
class Sign:
    """A word on a coloured sign over a plain background (TextVQA-style)."""

    word: str
    colour: str
    width: int
    height: int


def render_sign(rng: random.Random) -> tuple[Image.Image, Sign]:
    """A random word on a random sign colour, placed at a random spot; dark text on light signs."""
    width, height = random_size(rng)
    word, colour = rng.choice(WORDS), rng.choice(list(COLOURS))
    scale = rng.choice([2, 3, 4])
    while text_size(word, scale)[0] > width * 0.7 and scale > 1:
        scale -= 1
    tw, th = text_size(word, scale)
    pad = 3 * scale
    sw, sh = tw + 2 * pad, th + 2 * pad
    x, y = rng.randint(4, width - sw - 4), rng.randint(4, height - sh - 4)
    img = Image.new("RGB", (width, height), rng.choice(list(BACKGROUNDS.values())))
    ImageDraw.Draw(img).rectangle((x, y, x + sw, y + sh), fill=COLOURS[colour])
    ink = (20, 20, 20) if colour in ("yellow", "orange") else (255, 255, 255)
    draw_text(img, word, (x + pad, y + pad), scale, ink)
    return img, Sign(word, colour, width, height)


@dataclass(frozen=True)
class Book:
    """A book cover: title and author rendered on a cover coloured by its genre (OCR-VQA-style)."""

    title: str
    author: str
    genre: str


def render_cover(rng: random.Random) -> tuple[Image.Image, Book]:
    """A portrait cover with the title large near the top and the author small near the bottom."""
    title = " ".join(w.capitalize() for w in rng.sample(WORDS, rng.randint(1, 2)))
    book = Book(title, f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}", rng.choice(list(GENRES)))
    width = rng.choice([160, 192, 224])
    height = round(width * rng.uniform(1.3, 1.6))
    img = Image.new("RGB", (width, height), COLOURS[GENRES[book.genre]])
    ink = (20, 20, 20) if GENRES[book.genre] in ("yellow", "orange") else (255, 255, 255)
    lines = title.split()
    scale = 3 if max(text_size(w, 3)[0] for w in lines) < width - 16 else 2
    y = height // 6
    for line in lines:
        tw, th = text_size(line, scale)
        draw_text(img, line, ((width - tw) // 2, y), scale, ink)
        y += th + 6
    tw, th = text_size(book.author, 1)
    draw_text(img, book.author, ((width - tw) // 2, height - height // 6), 1, ink)
    return img, book


@dataclass(frozen=True)
class Chart:
    """A single-series bar chart: category labels, integer values (distinct), bar colours."""

    labels: tuple[str, ...]
    values: tuple[int, ...]
    colours: tuple[str, ...]


def render_chart(rng: random.Random, transparent: bool = False) -> tuple[Image.Image, Chart]:
    """2–5 labelled bars with their value printed above each bar, on white or on a transparent canvas."""
    n = rng.randint(2, 5)
    chart = Chart(
        tuple(w.capitalize() for w in rng.sample(WORDS, n)),
        tuple(10 * v for v in rng.sample(range(1, 10), n)),
        tuple(rng.sample(list(COLOURS), n)),
    )
    width, height = rng.choice([320, 384, 448]), rng.choice([240, 288, 320])
    ink = (30, 30, 30, 255) if transparent else (30, 30, 30)
    img = Image.new("RGBA" if transparent else "RGB", (width, height), (0, 0, 0, 0) if transparent else "white")
    draw = ImageDraw.Draw(img)
    base, top, slot = height - 24, 28, (width - 20) // n
    draw.line((8, base, width - 8, base), fill=ink, width=2)
    for i, (label, value, colour) in enumerate(zip(chart.labels, chart.values, chart.colours, strict=True)):
        x0 = 10 + i * slot + slot // 5
        x1 = 10 + (i + 1) * slot - slot // 5
        y0 = base - round((base - top) * value / 90)
        draw.rectangle((x0, y0, x1, base - 1), fill=COLOURS[colour] + ((255,) if transparent else ()))
        for text, y in ((str(value), y0 - 14), (label, base + 6)):
            tw, _ = text_size(text, 1)
            draw_text(img, text, ((x0 + x1 - tw) // 2, y), 1, ink)
    return img, chart


@dataclass(frozen=True)
class Document:
    """A one-page grey-scale document: a title, a few lines of body text and a signature (DocVQA-style)."""

    title: str
    signer: str


def render_document(rng: random.Random) -> tuple[Image.Image, Document]:
    """A white page with the title large at the top, 4–8 body lines and `Signed: NAME` at the bottom."""
    doc = Document(rng.choice(WORDS), f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}")
    width, height = rng.choice([256, 320]), rng.choice([352, 416])
    img = Image.new("L", (width, height), 255)
    tw, th = text_size(doc.title, 3)
    draw_text(img, doc.title, ((width - tw) // 2, 20), 3, 0)
    y = 20 + th + 20
    for _ in range(rng.randint(4, 8)):
        draw_text(img, " ".join(w.lower() for w in rng.sample(WORDS, 4)), (16, y), 1, 60)
        y += 18
    draw_text(img, f"Signed: {doc.signer}", (16, height - 40), 1, 0)
    return img, doc


OPPOSITES = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "black": "white", "white": "black"}
MIXES = {("blue", "yellow"): "green", ("red", "yellow"): "orange", ("red", "blue"): "purple"}
CORNERS = {"triangle": "three", "square": "four", "circle": "zero"}


def text_question(rng: random.Random) -> tuple[str, str]:
    """A question answerable without an image (LLaVA's text-only rows): opposites, colour mixing, corners, spelling."""
    kind = rng.randrange(5)
    if kind == 0:
        word = rng.choice(list(OPPOSITES))
        return f"What is the opposite of {word}?", OPPOSITES[word]
    if kind == 1:
        (a, b), c = rng.choice(list(MIXES.items()))
        return f"What colour do you get by mixing {a} and {b}?", c
    if kind == 2:
        shape = rng.choice(SHAPES)
        return f"How many corners does a {shape} have?", CORNERS[shape]
    if kind == 3:
        word = rng.choice(WORDS)
        return f"Spell the word {word}.", " ".join(word)
    k = rng.randrange(len(NUMBERS) - 1)
    return f"What number comes after {NUMBERS[k]}?", NUMBERS[k + 1]
