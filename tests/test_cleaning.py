import ast
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from lmtrain.config.recipe import CleanConfig  # noqa: E402
from lmtrain.corpus.cleaning import clean_text  # noqa: E402

ALL_OFF = CleanConfig(
    unicode_nfc=False,
    normalize_whitespace=False,
    drop_control_chars=False,
    strip_html=False,
    lowercase=False,
    strip_punctuation=False,
)
CODE = CleanConfig(strip_html=False)  # what a code corpus uses

PYTHON_SOURCE = (
    "\r\n\r\nimport os\r\n\r\n\r\n\r\n\r\n"
    "class Box:  \r\n"
    '    """A box."""\r\n'
    "\r\n"
    "    def size(self, a, b):\t\r\n"
    "        if a<b and b>a:\r\n"
    '            return {"w": a,   "h": b}\r\n'
    "        return None\r\n"
    "\r\n\r\n"
    "def tabbed(x):\r\n"
    "\tif x:\r\n"
    "\t\treturn x   \r\n"
)


def test_nfc_composes_accents():
    assert clean_text("Cafe\u0301", CleanConfig()) == "Caf\u00e9"


def test_line_endings_unified_and_trailing_spaces_stripped():
    assert clean_text("a  \r\nb\t\rc\u2028d", CleanConfig()) == "a\nb\nc\nd"


def test_leading_indentation_and_tabs_kept():
    assert clean_text("    x = 1\n\tif y:\n\t\tz", CleanConfig()) == "    x = 1\n\tif y:\n\t\tz"


def test_blank_line_runs_collapse_to_two_and_edges_trimmed():
    text = "\n  \n\n  first\n\n\n\n\n\nsecond\n\n\nthird\n\n  \n"
    assert clean_text(text, CleanConfig()) == "  first\n\n\nsecond\n\n\nthird"


def test_exotic_spaces_become_spaces_but_ideographic_space_is_kept():
    assert clean_text("a\u00a0b\u2003c\u202fd", CleanConfig()) == "a b c d"
    chinese = "\u3000\u3000这是一个段落，使用全角空格缩进。第二句：“引号”！"
    assert clean_text(chinese, CleanConfig()) == chinese


def test_control_characters_dropped_except_newline_and_tab():
    assert clean_text("a\x00b\x07c\x1bd\x7fe\x85f\x9fg\th\ni", CleanConfig()) == "abcdefg\th\ni"


def test_python_source_keeps_its_meaning():
    cleaned = clean_text(PYTHON_SOURCE, CODE)
    assert ast.dump(ast.parse(cleaned)) == ast.dump(ast.parse(PYTHON_SOURCE))
    assert cleaned.startswith("import os\n\n\nclass Box:\n")  # 4 blank lines became 2
    assert '        if a<b and b>a:\n            return {"w": a,   "h": b}\n' in cleaned
    assert cleaned.endswith("def tabbed(x):\n\tif x:\n\t\treturn x")


def test_strip_html_removes_tags_scripts_and_unescapes():
    page = (
        '<html><head><style>p {color: red}</style><script>var x = "<b>";</script></head>'
        "<body><!-- nav --><h1>Title</h1><p>Fish &amp; chips&nbsp;for &lt;2&gt; people</p>"
        "<p>Second <b>bold</b> line</p></body></html>"
    )
    assert clean_text(page, CleanConfig(strip_html=True)) == "Title\n\nFish & chips for <2> people\n\nSecond bold line"


def test_strip_html_off_keeps_comparisons():
    assert clean_text("if a<b and c>d: pass", CODE) == "if a<b and c>d: pass"


def test_lowercase_and_strip_punctuation():
    cfg = CleanConfig(lowercase=True, strip_punctuation=True)
    assert clean_text("Hello, World! (It's) “quoted” — 你好，世界。", cfg) == "hello world its quoted  你好世界"


def test_everything_off_is_identity():
    messy = "  <b>X</b>\r\n\x00 e\u0301 \u00a0\n\n\n\n\nEnd!  "
    assert clean_text(messy, ALL_OFF) == messy
