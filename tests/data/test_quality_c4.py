"""C4's line cleaning and page rules (Raffel et al. 2020, section 2.2)."""

from __future__ import annotations

from fmforge.config import C4Config
from fmforge.data.c4 import C4
from fmforge.data.readers.base import Document

PAGE = """Home | About | Contact
Welcome to our bakery in the heart of town. We bake bread every morning.
Please enable JavaScript to see the map of our shop.
Our sourdough takes two days to make. It rises slowly overnight in the cold.
This site uses cookies to improve your experience.
The rye loaf is dense and dark. Many customers buy it on Fridays.[1]
Buy now!
Read more
Opening hours are posted on the door and may change in winter...
"""


def run(text: str, **cfg) -> tuple[str | None, Document, C4]:
    step = C4(C4Config(**cfg))
    doc = Document("d", text, "s")
    return step(doc), doc, step


def test_boilerplate_lines_are_removed_and_prose_kept():
    reason, doc, step = run(PAGE)
    assert reason is None
    assert doc.text == (
        "Welcome to our bakery in the heart of town. We bake bread every morning.\n"
        "Our sourdough takes two days to make. It rises slowly overnight in the cold.\n"
        "The rye loaf is dense and dark. Many customers buy it on Fridays.")
    c = step.counters()
    # menu and "Read more": no full stop; the ellipsis line too; "Buy now!": two
    # words; one JavaScript line; one cookie notice.
    assert c["lines_removed"] == 6
    assert c["lines_removed_terminal_punctuation"] == 3
    assert c["lines_removed_min_words_per_line"] == 1
    assert c["lines_removed_javascript"] == 1
    assert c["lines_removed_policy"] == 1
    assert c["citations_removed"] == 1


def test_five_sentences_kept_four_dropped():
    five = "One two three. Four five six.\nSeven eight nine. Ten eleven twelve.\nThirteen fourteen fifteen."
    assert run(five)[0] is None
    four = "One two three. Four five six.\nSeven eight nine. Ten eleven twelve."
    assert run(four)[0] == "c4:min_sentences"


def test_lorem_ipsum_and_curly_brackets_drop_the_page():
    prose = "This is a sentence of prose. " * 5
    assert run(prose + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.")[0] == \
        "c4:drop_lorem_ipsum"
    assert run(prose + "\nThe function returns {a: 1} to the caller.")[0] == "c4:drop_curly_bracket"
    # switched off, the same page is kept
    assert run(prose + "\nThe function returns {a: 1} to the caller.",
               drop_curly_bracket=False)[0] is None


def test_a_word_over_1000_characters_removes_its_line():
    prose = "This is a sentence of prose. " * 5
    reason, doc, step = run(prose + "\nThe blob " + "x" * 1001 + " ends here.")
    assert reason is None and doc.text == prose.strip()
    assert step.counters()["lines_removed_max_word_length"] == 1
    reason, doc, _ = run(prose + "\nThe blob " + "x" * 1000 + " ends here.")
    assert doc.text.endswith("ends here.")
