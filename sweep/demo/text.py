"""What the demo world's documents say: seeded generators of readable text, one per Amber source.

Amber's corpus mixes web text (refinedweb, c4), code (starcoderdata), papers (arxiv) and
encyclopedia articles (wikipedia). The miniature writes documents in those styles from word lists
(a few hundred words) and templates, so every row of the demo corpus decodes to text a person can
read, and it plants the kinds of text that real models are known to memorize:

- boilerplate that recurs verbatim across the whole corpus: licence headers at the top of code
  files, cookie and newsletter notices on web pages, the LaTeX preamble of papers, the same
  sayings quoted again and again;
- templated records holding FAKE personal data (names, emails at the reserved ``example.*``
  domains, phone numbers in the fictional 555-01xx range, invented street addresses), the
  shape of text a privacy audit looks for;
- everything else is grammatical nonsense whose words are drawn afresh for every slot, so a model
  can only reproduce a particular passage by having memorized it.

All text here is written for memsweep: the sayings play on common proverbs, and the licence
notices imitate the shape of common licences, not their wording. Generation is a pure function of
the ``random.Random`` it is given: same seed, same documents, on any platform. Cost: about 35 ms
per 1,000 documents (0.6 MB of text).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

# --- word lists -------------------------------------------------------------------------------

FIRST_NAMES = (
    "Alice", "Ben", "Clara", "Daniel", "Elena", "Felix", "Grace", "Hugo", "Iris", "Jonas",
    "Karen", "Liam", "Maya", "Nolan", "Olivia", "Pavel", "Quinn", "Rosa", "Samuel", "Tara",
    "Umar", "Vera", "Walter", "Xenia", "Yusuf", "Zoe", "Amir", "Bianca", "Carlos", "Dana",
    "Emil", "Fiona", "Gustav", "Hana", "Ivan", "Julia", "Kofi", "Lena", "Marco", "Nina",
)
LAST_NAMES = (
    "Abbott", "Brennan", "Castillo", "Dalton", "Eriksen", "Fairfax", "Gallagher", "Holloway",
    "Ibarra", "Jansen", "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov",
    "Quigley", "Romano", "Sandoval", "Thorne", "Underwood", "Valdez", "Whitaker", "Yilmaz",
    "Zimmer", "Ashford", "Blackwood", "Crane", "Delgado", "Everett", "Fontaine", "Garrison",
)
TOWNS = (
    "Maple Hollow", "Eastbrook", "Silverton", "Fernvale", "Oakridge", "Brightwater", "Kingsford",
    "Willowmere", "Stonebridge", "Redcliff", "Ashbury", "Pinecrest", "Lakeshore", "Marlow Bay",
)
STREETS = (
    "Elm", "Cedar", "Birch", "Harbor", "Mill", "Orchard", "Chapel", "Juniper", "Meadow", "Quarry",
    "Sparrow", "Lantern", "Copper", "Rosewood", "Falcon", "Thistle",
)
STREET_KINDS = ("Street", "Avenue", "Lane", "Road", "Court", "Way")
REGIONS = ("North Province", "West County", "Lake District", "Central Valley", "South Coast")
DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")

# Prose draws most words afresh from lists this long, so that a passage's word pairs rarely recur
# elsewhere: a model can only continue it by having memorized it, as with real text. (With ~15
# words per slot every sentence shared its contexts with hundreds of others, and each new chunk
# overwrote the last one's memories.)
NOUNS = tuple("""
garden seed tomato soil hedge rose fence root leaf shed path pond herb orchard meadow barn
train harbor map ticket bridge hotel road coast station ferry village market museum tower valley
soup bread oven onion sauce pan recipe butter flour kitchen spoon lemon cheese pastry kettle
council budget school park library street bus office mayor square clinic festival tram
sample signal model cell crystal planet sensor enzyme particle orbit protein layer network method
river mountain forest island desert glacier canyon lake storm cloud thunder sunrise shadow
teacher doctor farmer sailor painter baker pilot student neighbor stranger merchant poet judge
letter parcel window door ladder lamp clock mirror blanket basket bottle candle hammer rope
violin drum piano song choir dance poem novel chapter journal diary archive photograph
engine wheel bicycle wagon carriage rocket satellite compass anchor telescope microscope
horse sparrow falcon fox otter badger rabbit salmon beetle moth heron goat lamb wolf
copper silver marble granite timber canvas wool linen velvet glass paper ink chalk
""".split())
VERBS = tuple("""
water plant trim cover feed check dig reach cross follow visit leave find pass book stir bake
taste cut warm mix serve pour approve open delay fund review close repair plan measure predict
explain detect reduce improve test compare carry paint build hide guard sell buy borrow lend
count sort wash fold lift pull push watch hear remember forget name describe praise question
answer greet chase catch
""".split())
""" Base forms; :func:`_add_s` makes "waters", "washes", "carries". """
ADJECTIVES = tuple("""
green dry wild small early tall quiet sunny old busy narrow famous distant cheap late crowded
fresh sweet hot thick golden simple spicy soft new public local costly modern empty central
stable weak strong random linear rare dense precise bright dark heavy light broken hidden
ancient gentle clever lazy brave curious careful noisy patient proud silent sudden strange
wooden copper silver frozen muddy dusty shiny rusty crooked round square narrow tiny enormous
""".split())
ADVERBS = tuple("""
quickly slowly quietly carefully rarely often gladly barely nearly suddenly gently proudly
""".split())
PREPOSITIONS = ("near", "behind", "beside", "under", "over", "across", "inside", "beyond", "around",
                "after", "before", "along")
DETERMINERS = ("the", "the", "the", "a", "every", "this", "that", "our", "their", "one old")
CONNECTIVES = ("Later", "Meanwhile", "Since then", "At first", "By evening", "In the end",
               "Every spring", "Last year", "Until now", "Once again", "Years ago", "That winter")
SUBJECTS_OF_STUDY = ("botany", "geology", "music", "chemistry", "architecture", "navigation",
                     "astronomy", "weaving")

SAYINGS = (
    "A quiet river still reaches the sea.",
    "Measure twice and cut once, but read the manual first.",
    "The best time to plant a hedge was ten years ago; the second best time is after lunch.",
    "Every bridge is built from both banks at once.",
    "A map is not the road, and the road is not the trip.",
    "Slow bread is good bread.",
    "Nobody remembers the weather, only the company.",
    "The lantern does not argue with the dark.",
)

# --- recurring boilerplate (the text models memorize first) -----------------------------------

LICENCES = (
    # permissive, MIT-like in shape
    "Copyright (c) {year} {holder}\n\n"
    "Anyone who receives a copy of this software may use, copy, change, merge, publish and\n"
    "share it, free of charge, as long as this notice stays in every copy or large part of it.\n\n"
    "THE SOFTWARE COMES AS IS, WITH NO PROMISE OF ANY KIND THAT IT WORKS. THE AUTHORS ARE NOT\n"
    "RESPONSIBLE FOR ANY CLAIM, DAMAGE OR OTHER TROUBLE THAT COMES FROM USING IT.",
    # Apache-like in shape
    "Copyright {year} {holder}\n\n"
    "This file is part of a project released under the Demo Open License, Version 2.0.\n"
    "You may use this file only if you follow that license. A copy of the license is in the\n"
    "LICENSE file next to this file. Unless the law says otherwise or you agreed in writing,\n"
    "the software is shared ON AN AS IS BASIS, WITHOUT ANY GUARANTEE OR CONDITION OF ANY KIND.\n"
    "Read the license for the rights and limits that apply to you.",
    # GPL-like in shape
    "{holder}, {year}.\n\n"
    "This program is free software: you may pass it on and change it under the terms of the\n"
    "Demo General Public License, version 3, or (at your choice) any later version.\n"
    "We share this program hoping it will be useful, but WITHOUT ANY GUARANTEE; not even the\n"
    "implied promise that it can be sold or fits any purpose. See the Demo General Public\n"
    "License for more details. You should have received a copy of it with this program.",
)
WEB_NOTICES = (
    "This site uses cookies to remember your settings and to count visits. By using the site\n"
    "you accept our use of cookies. Read our privacy notice to learn more.",
    "Sign up for our weekly newsletter and get the best stories in your inbox every Friday.\n"
    "You can leave the list at any time with one click.",
    "All rights reserved. No part of this page may be copied or shared without written\n"
    "permission from the editors.",
)
LATEX_PREAMBLE = (
    "\\documentclass[11pt]{article}\n"
    "\\usepackage{amsmath,amssymb,amsthm}\n"
    "\\usepackage{graphicx}\n"
    "\\usepackage[margin=1in]{geometry}\n"
    "\\newtheorem{theorem}{Theorem}\n"
    "\\newtheorem{lemma}[theorem]{Lemma}\n"
    "\\begin{document}\n"
)
PYTHON_IMPORTS = (
    "import os\nimport sys\nimport json\nfrom typing import Dict, List, Optional\n\n"
    "import numpy as np\n",
    "import logging\nimport re\nfrom dataclasses import dataclass\nfrom pathlib import Path\n",
)


# --- generators -------------------------------------------------------------------------------

def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _add_s(word: str) -> str:
    """English -s: "waters", "washes", "carries"; also plural nouns: "foxes", "ferries"."""
    if word.endswith(("s", "sh", "ch", "x")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _plural(noun: str) -> str:
    return {"leaf": "leaves", "wolf": "wolves"}.get(noun) or _add_s(noun)


def _verb(rng: random.Random) -> str:
    return _add_s(rng.choice(VERBS))


def _noun_phrase(rng: random.Random) -> str:
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    words.append(rng.choice(NOUNS))
    if rng.random() < 0.15:
        words += ["of", "the", rng.choice(NOUNS)]
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words)


def _sentence(rng: random.Random) -> str:
    """One sentence of grammatical nonsense; optional parts vary its length, as real prose does."""
    subject = rng.choice(FIRST_NAMES) if rng.random() < 0.25 else _noun_phrase(rng)
    pattern = rng.randrange(5)
    if pattern == 0:
        predicate = f"{_verb(rng)} {_noun_phrase(rng)}"
    elif pattern == 1:
        predicate = f"was {rng.choice(ADJECTIVES)}"
        if rng.random() < 0.5:
            predicate += f" and {rng.choice(ADJECTIVES)}"
    elif pattern == 2:
        predicate = f"{rng.choice(ADVERBS)} {_verb(rng)} {_noun_phrase(rng)}"
    elif pattern == 3:
        predicate = f"{_verb(rng)} {_noun_phrase(rng)} and {_verb(rng)} {_noun_phrase(rng)}"
    else:
        predicate = f"said that {_noun_phrase(rng)} {_verb(rng)} {_noun_phrase(rng)}"
    sentence = f"{subject} {predicate}"
    if rng.random() < 0.4:
        sentence += f" {rng.choice(PREPOSITIONS)} {_noun_phrase(rng)}"
    if rng.random() < 0.2:
        sentence = f"{rng.choice(CONNECTIVES)}, {sentence}"
    elif rng.random() < 0.1:
        sentence = f"In {rng.randrange(1890, 2024)}, {sentence}"
    return sentence[0].upper() + sentence[1:] + "."


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def _fake_person(rng: random.Random) -> dict[str, str]:
    """A clearly fake identity: reserved domains, fictional 555-01xx numbers, invented towns."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return {
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}{rng.randrange(10, 99)}@{rng.choice(DOMAINS)}",
        "phone": f"+1 ({rng.randrange(201, 989)}) 555-01{rng.randrange(100):02d}",
        "address": (f"{rng.randrange(1, 999)} {rng.choice(STREETS)} {rng.choice(STREET_KINDS)}, "
                    f"{rng.choice(TOWNS)}, {rng.choice(REGIONS)} {rng.randrange(10000, 99999)}"),
        "born": f"{rng.randrange(1940, 2005)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
    }


def _record(rng: random.Random) -> str:
    person = _fake_person(rng)
    return (f"Name: {person['name']}\nEmail: {person['email']}\nPhone: {person['phone']}\n"
            f"Address: {person['address']}\nDate of birth: {person['born']}\n")


def web_article(rng: random.Random) -> str:
    """refinedweb / c4: a short article, sometimes with a site notice before or after it."""
    title = f"{rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS)} news from {rng.choice(TOWNS)}"
    parts = [title, _paragraph(rng, rng.randrange(3, 8))]
    if rng.random() < 0.3:
        parts.append(f"As the saying goes: \"{rng.choice(SAYINGS)}\"")
    if rng.random() < 0.5:
        parts.append(_paragraph(rng, rng.randrange(2, 6)))
    if rng.random() < 0.35:
        notice = rng.choice(WEB_NOTICES)
        if rng.random() < 0.5:
            parts.insert(0, notice)
        else:
            parts.append(notice)
    return "\n\n".join(parts)


def contact_page(rng: random.Random) -> str:
    """refinedweb / c4: a directory page of fake personal records (what a PII audit looks for)."""
    club = rng.choice(("Rowing Club", "Library Friends", "Chess Society", "Garden Guild", "Choir"))
    head = f"{rng.choice(TOWNS)} {club}: members"
    records = [_record(rng) for _ in range(rng.randrange(1, 4))]
    return head + "\n\n" + "\n".join(records)


def _identifier(rng: random.Random) -> str:
    return f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"  # "water_basket"


def code_file(rng: random.Random) -> str:
    """starcoderdata: a Python module, often under a licence header, with imports and docstrings."""
    parts = []
    if rng.random() < 0.5:
        licence = rng.choice(LICENCES).format(year=rng.randrange(2008, 2024), holder=_name(rng))
        parts.append("\n".join(f"# {line}".rstrip() for line in licence.split("\n")))
    parts.append(f'"""Tools for the {rng.choice(NOUNS)} {rng.choice(NOUNS)} pipeline."""')
    parts.append(rng.choice(PYTHON_IMPORTS))
    for _ in range(rng.randrange(1, 4)):
        noun, other, helper = rng.choice(NOUNS), rng.choice(NOUNS), _identifier(rng)
        nouns, verb = _plural(noun), rng.choice(VERBS)
        parts.append(
            f"def {verb}_{noun}({nouns}, {other}=None):\n"
            f'    """{verb.title()} every {noun} and return the {rng.choice(ADJECTIVES)} {_plural(other)}.\n\n'
            f"    Args:\n        {nouns}: the {nouns} to {verb}.\n"
            f"        {other}: an optional {other}.\n"
            f'    """\n'
            f"    result = []\n"
            f"    for {noun} in {nouns}:\n"
            f"        if {noun} is None:\n            continue\n"
            f"        result.append({helper}({noun}, {other}, {rng.randrange(2, 100)}))\n"
            f"    return result\n")
    return "\n\n".join(parts)


def paper(rng: random.Random) -> str:
    """arxiv: a LaTeX paper opening with the usual preamble."""
    title = (f"{rng.choice(ADJECTIVES).title()} {_plural(rng.choice(NOUNS)).title()} for "
             f"{rng.choice(NOUNS).title()} {rng.choice(('Estimation', 'Control', 'Search', 'Design'))}")
    return (f"{LATEX_PREAMBLE}\\title{{{title}}}\n\\author{{{_name(rng)} \\and {_name(rng)}}}\n"
            f"\\maketitle\n\\begin{{abstract}}\n{_paragraph(rng, rng.randrange(2, 5))}\n"
            f"\\end{{abstract}}\n\\section{{Introduction}}\n{_paragraph(rng, rng.randrange(3, 7))}\n")


def biography(rng: random.Random) -> str:
    """wikipedia: a short biography of a fake person, with a quoted saying."""
    person = _fake_person(rng)
    born = rng.randrange(1850, 1960)
    job = rng.choice(("a painter", "an engineer", "a botanist", "an architect", "a composer", "a chemist"))
    return (f"{person['name']} ({born}-{born + rng.randrange(40, 95)}) was {job} from "
            f"{rng.choice(TOWNS)} who studied {rng.choice(SUBJECTS_OF_STUDY)}.\n\n"
            f"== Early life ==\n{_paragraph(rng, rng.randrange(2, 5))}\n\n"
            f"== Work ==\n{_paragraph(rng, rng.randrange(2, 5))}\n\n"
            f"== Legacy ==\n{person['name'].split()[1]} is remembered for the words "
            f"\"{rng.choice(SAYINGS)}\"\n\n== References ==\n")


@dataclass(frozen=True)
class Source:
    """One Amber source: its share of documents and the document kinds it is made of."""

    name: str
    weight: float
    """Share of documents, set so that rows come out near Amber's shares (code documents are long)."""
    kinds: tuple[tuple[Callable[[random.Random], str], float], ...]
    """(generator, share within the source)."""

    def document(self, rng: random.Random) -> str:
        generators, weights = zip(*self.kinds)
        return rng.choices(generators, weights)[0](rng)


SOURCES: tuple[Source, ...] = (
    Source("refinedweb", 0.62, ((web_article, 0.85), (contact_page, 0.15))),
    Source("starcoderdata", 0.12, ((code_file, 1.0),)),
    Source("c4", 0.18, ((web_article, 0.7), (contact_page, 0.3))),
    Source("arxiv", 0.04, ((paper, 1.0),)),
    Source("wikipedia", 0.04, ((biography, 1.0),)),
)
SOURCE_NAMES = tuple(source.name for source in SOURCES)


def documents(rng: random.Random) -> Iterator[tuple[str, str]]:
    """An endless stream of ``(source_name, text)`` documents, sources drawn by weight."""
    weights = [source.weight for source in SOURCES]
    while True:
        source = rng.choices(SOURCES, weights)[0]
        yield source.name, source.document(rng)
