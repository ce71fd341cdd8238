"""Images drawn in the terminal: iTerm2's inline images (iTerm2, WezTerm), kitty's graphics
protocol, and sixel (xterm -ti vt340, foot, mlterm, Konsole, Windows Terminal, ...).

iTerm2 and kitty announce themselves in the environment. Sixel terminals do not, so they are asked:
the primary device attributes (DA1, ``ESC [ c``) list 4 when a terminal draws sixel, which is how
chafa, timg and img2sixel find out too. Nothing is drawn, and nothing asked, outside a terminal.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

#: How long a terminal gets to answer the DA1 query; every VT100 descendant answers at once.
DA1_TIMEOUT_S = 0.25
_DA1_REPLY = re.compile(rb"\x1b\[\?([0-9;]*)c")
#: DA1 attribute of a terminal that draws sixel graphics.
_SIXEL = 4


def show_inline(image: Path) -> bool:
    """Draw a PNG in the terminal if it speaks an inline-image protocol: iTerm2's (iTerm2,
    WezTerm), kitty's graphics protocol, or sixel. Only on a terminal; returns whether it drew."""
    import base64

    if not sys.stdout.isatty():
        return False
    term, program = os.environ.get("TERM", ""), os.environ.get("TERM_PROGRAM", "")
    if program in ("iTerm.app", "WezTerm"):
        data = base64.standard_b64encode(image.read_bytes()).decode()
        sys.stdout.write(f"\033]1337;File=inline=1;size={len(data) * 3 // 4}:{data}\a\n")
    elif "kitty" in term or os.environ.get("KITTY_WINDOW_ID"):
        data = base64.standard_b64encode(image.read_bytes()).decode()
        # PNG (f=100), sent in chunks of at most 4096 base64 bytes, as the protocol asks.
        chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
        for i, chunk in enumerate(chunks):
            head = "a=T,f=100," if i == 0 else ""
            more = int(i < len(chunks) - 1)
            sys.stdout.write(f"\033_G{head}m={more};{chunk}\033\\")
        sys.stdout.write("\n")
    elif _terminal_draws_sixel():
        from PIL import Image

        try:
            with Image.open(image) as im:
                drawn = sixel(im)
        except OSError:
            return False  # not an image Pillow reads: the path alone is printed
        sys.stdout.write(drawn + "\n")
    else:
        return False
    sys.stdout.flush()
    return True


def sixel(image: Any, *, colors: int = 255) -> str:
    """``image`` (a PIL image) as a sixel string, in at most ``colors`` registers.

    Pillow quantizes (median cut); each band of six rows is then one run-length encoded line per
    color present in it.

    Args:
        image: any PIL image; transparency is dropped.
        colors: palette size, at most 256 (what most sixel terminals hold).

    Returns:
        The DCS sequence, from ``ESC P q`` to ``ESC \\``.
    """
    import numpy as np

    quantized = image.convert("RGB").quantize(colors=colors)
    width, height = quantized.size
    pixels = np.asarray(quantized, dtype=np.uint8)
    palette = quantized.getpalette() or []
    used = int(pixels.max()) + 1 if pixels.size else 0
    out = ["\033Pq", f'"1;1;{width};{height}']
    for i in range(used):
        r, g, b = (round(v * 100 / 255) for v in palette[3 * i : 3 * i + 3])
        out.append(f"#{i};2;{r};{g};{b}")
    weights = (1 << np.arange(6, dtype=np.uint8))[:, None]
    for top in range(0, height, 6):
        band = pixels[top : top + 6]
        lines = []
        for color in np.unique(band):
            bits = ((band == color) * weights[: len(band)]).sum(axis=0) + 63
            lines.append(f"#{color}" + _run_length(bytes(bits.astype(np.uint8)).decode()))
        out.append("$".join(lines) + "-")  # $: back to the band's start; -: the next band
    out.append("\033\\")
    return "".join(out)


def _run_length(line: str) -> str:
    # "!<n><char>" repeats a sixel; worth it from four repeats on.
    return re.sub(r"(.)\1{3,}", lambda m: f"!{len(m.group(0))}{m.group(1)}", line)


def _terminal_draws_sixel() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return _SIXEL in device_attributes(fd)
    finally:
        os.close(fd)


def device_attributes(fd: int, *, timeout: float = DA1_TIMEOUT_S) -> set[int]:
    """The terminal's primary device attributes, asked on ``fd`` (a terminal); empty if it does
    not answer within ``timeout`` seconds or ``fd`` is no terminal (or on Windows)."""
    import select
    import time

    try:
        import termios
    except ImportError:  # Windows
        return set()
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        return set()
    raw = termios.tcgetattr(fd)
    raw[3] &= ~(termios.ICANON | termios.ECHO)  # the answer must not be echoed or line-buffered
    termios.tcsetattr(fd, termios.TCSANOW, raw)
    reply = b""
    try:
        os.write(fd, b"\033[c")
        deadline = time.monotonic() + timeout
        while not _DA1_REPLY.search(reply):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            reply += os.read(fd, 256)
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
    found = _DA1_REPLY.search(reply)
    return {int(a) for a in found.group(1).split(b";") if a} if found else set()
