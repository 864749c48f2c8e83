"""Draw GPT-2's architecture as an SVG, with no dependencies: docs/images/architecture.svg.

Run from the repository root: ``python docs/scripts/architecture_diagram.py`` (``--check``
exits 1 when the committed image is out of date). The picture follows ``npgpt/model.py``:
token and position embeddings, ``n_layer`` pre-LN blocks (LN -> attention -> add, LN -> MLP ->
add), a final layer norm, the tied head and the softmax. The figures in the side notes are
read from ``GPTConfig()`` (GPT-2 small), so they cannot drift from the code.
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUTPUT = ROOT / "docs" / "images" / "architecture.svg"

WIDTH = 640
BOX_W = 260
X = 190                              # left edge of the main column
CX = X + BOX_W // 2                  # its centre

COLOURS = {"embed": "#dbeafe", "norm": "#fef3c7", "attn": "#fce7f3", "mlp": "#dcfce7",
           "add": "#ffffff", "head": "#e0e7ff", "io": "#f3f4f6"}


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def box(y, h, label, kind, note=None):
    parts = [f'<rect x="{X}" y="{y}" width="{BOX_W}" height="{h}" rx="6" fill="{COLOURS[kind]}" '
             f'stroke="#374151" stroke-width="1.2"/>',
             f'<text x="{CX}" y="{y + h / 2 + 5:.0f}" text-anchor="middle">{esc(label)}</text>']
    if note:
        parts.append(f'<text x="{X + BOX_W + 14}" y="{y + h / 2 + 4:.0f}" class="note">{esc(note)}</text>')
    return parts


def arrow(y1, y2, x=CX):
    return [f'<line x1="{x}" y1="{y1}" x2="{x}" y2="{y2 - 2}" stroke="#374151" stroke-width="1.4" '
            f'marker-end="url(#head)"/>']


def plus(y):
    r = 11
    return [f'<circle cx="{CX}" cy="{y + r}" r="{r}" fill="#ffffff" stroke="#374151" stroke-width="1.2"/>',
            f'<text x="{CX}" y="{y + r + 5}" text-anchor="middle">+</text>']


def residual(y_from, y_to):
    """The skip path: from the stream above a sub-layer, round its left side, into the '+'."""
    xl = X - 40
    return [f'<path d="M {CX} {y_from} H {xl} V {y_to} H {CX - 11}" fill="none" stroke="#6b7280" '
            f'stroke-width="1.4" stroke-dasharray="5 3" marker-end="url(#head)"/>']


def render():
    from npgpt.model import GPTConfig

    c = GPTConfig()
    d_k = c.n_embd // c.n_head
    body = []
    y = 20
    body += box(y, 34, "token ids x (B, T)", "io")
    y += 34
    body += arrow(y, y + 22)
    y += 22
    body += box(y, 44, "token + position embeddings", "embed",
                f"wte ({c.vocab_size:,} x {c.n_embd}) + wpe ({c.block_size} x {c.n_embd})")
    y += 44
    body += arrow(y, y + 40)
    y += 40
    top = y - 28
    # one block, drawn once inside a frame labelled "x n_layer"
    stream_in = y - 16
    body += box(y, 34, "LayerNorm ln_1", "norm")
    y += 34
    body += arrow(y, y + 18)
    y += 18
    body += box(y, 44, "causal self-attention", "attn", f"{c.n_head} heads of d_k = {d_k}, masked")
    y += 44
    body += arrow(y, y + 16)
    y += 16
    body += plus(y)
    body += residual(stream_in, y + 11)
    y += 22
    body += arrow(y, y + 26)
    stream_mid = y + 12
    y += 26
    body += box(y, 34, "LayerNorm ln_2", "norm")
    y += 34
    body += arrow(y, y + 18)
    y += 18
    body += box(y, 44, "MLP: Linear, GELU, Linear", "mlp", f"{c.n_embd} -> {4 * c.n_embd} -> {c.n_embd}")
    y += 44
    body += arrow(y, y + 16)
    y += 16
    body += plus(y)
    body += residual(stream_mid, y + 11)
    y += 22
    bottom = y + 22
    body.insert(0, f'<rect x="{X - 60}" y="{top}" width="{BOX_W + 68}" height="{bottom - top}" rx="10" '
                   f'fill="none" stroke="#9ca3af" stroke-width="1.2"/>')
    body.append(f'<text x="{X - 52}" y="{bottom - 7}" class="frame">x {c.n_layer} blocks (n_layer)</text>')
    body += arrow(y, y + 44)
    y += 44
    body += box(y, 34, "LayerNorm ln_f", "norm")
    y += 34
    body += arrow(y, y + 22)
    y += 22
    body += box(y, 44, "tied head: logits = h wte^T", "head", f"the same wte, transposed ({c.n_embd} x {c.vocab_size:,})")
    y += 44
    body += arrow(y, y + 22)
    y += 22
    body += box(y, 34, "softmax: p(x_t+1 | x_1..t)", "io")
    y += 34
    height = y + 20
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH + 120}" height="{height}" '
            f'viewBox="0 0 {WIDTH + 120} {height}" font-family="Helvetica, Arial, sans-serif" font-size="14">',
            f"<title>GPT-2 ({c.num_parameters():,} parameters with GPTConfig())</title>",
            "<defs><marker id=\"head\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" "
            "markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#374151\"/>"
            "</marker>",
            "<style>.note { font-size: 12px; fill: #4b5563; } .frame { font-size: 12px; fill: #6b7280; "
            "font-style: italic; }</style></defs>",
            f'<rect width="{WIDTH + 120}" height="{height}" fill="#ffffff"/>']
    return "\n".join(head + body + ["</svg>"]) + "\n"


def main(argv):
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print("docs/images/architecture.svg is out of date: run python docs/scripts/architecture_diagram.py",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
