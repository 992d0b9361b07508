"""Addresses that look like another: the checks of Unicode Technical Standard #39.

``x@exаmple.com`` (a Cyrillic а among Latin letters) reads as ``example.com``
and is a different domain; ``ﬁx@example.com`` (a ligature) reads as
``fix@example.com``. An address is refused when:

- NFKC normalisation would change it (ligatures, full-width and superscript
  forms, compatibility letters such as the Kelvin sign);
- a domain label, or a dot-separated part of the local part, mixes scripts
  beyond what UTS #39 calls *highly restrictive*: one script, or Latin with
  Han and Japanese kana, with Han and Bopomofo, or with Han and Hangul.
  Characters common to all scripts (digits, hyphens) fit any; a character's
  scripts are its Script_Extensions, so marks shared by several scripts fit
  each of them;
- one label mixes digits of different numbering systems (``1`` and ``١``).

All-Cyrillic or all-Greek addresses (``ann@пример.рф``) are single-script and
pass: whole-script look-alikes of Latin names are a matter of which domains a
product accepts, not of what an address is.
"""

from __future__ import annotations

import functools
import unicodedata

import regex

# Every script of Unicode (ISO 15924 codes) but Common (Zyyy), Inherited (Zinh) and Unknown (Zzzz).
_SCRIPTS = (
    "Latn Bopo Grek Copt Cyrl Armn Hebr Arab Syrc Thaa Nkoo Samr Mand Deva Beng Guru Gujr Orya Taml Telu Knda "
    "Mlym Sinh Thai Laoo Tibt Mymr Geor Hang Ethi Cher Cans Ogam Runr Tglg Hano Buhd Tagb Khmr Mong Limb Tale "
    "Talu Bugi Lana Bali Sund Batk Lepc Olck Brai Glag Tfng Hani Hira Kana Yiii Lisu Vaii Bamu Sylo Phag Saur "
    "Kali Rjng Java Cham Tavt Mtei Linb Lyci Cari Ital Goth Perm Ugar Xpeo Dsrt Shaw Osma Osge Elba Aghb Vith "
    "Todr Lina Cprt Armi Palm Nbat Hatr Phnx Lydi Sidt Mero Merc Khar Sarb Narb Mani Avst Prti Phli Phlp Orkh "
    "Hung Rohg Gara Yezi Sogo Sogd Ougr Chrs Elym Brah Kthi Sora Cakm Mahj Shrd Khoj Mult Sind Gran Tutg Newa "
    "Tirh Sidd Modi Takr Ahom Dogr Wara Diak Nand Zanb Soyo Pauc Sunu Bhks Marc Gonm Gong Tols Maka Kawi Xsux "
    "Pcun Cpmn Egyp Hluw Gukh Mroo Tnsa Bass Hmng Krai Medf Berf Miao Tang Nshu Kits Jurc Dupl Sgnw Hmnp Toto "
    "Wcho Nagm Onao Tayo Mend Adlm Seal"
).split()
_PATTERNS = {}
for _code in _SCRIPTS:
    try:
        _PATTERNS[_code] = regex.compile(r"\p{scx=%s}" % _code)
    except regex.error:  # a script newer than the installed regex module knows
        pass

# Han is written with kana (Japanese), Bopomofo (Chinese) or Hangul (Korean):
# the writing systems UTS #39 names Jpan, Hanb and Kore.
_AUGMENT = {"Hani": {"Jpan", "Hanb", "Kore"}, "Hira": {"Jpan"}, "Kana": {"Jpan"}, "Hang": {"Kore"}, "Bopo": {"Hanb"}}
_HIGHLY_RESTRICTIVE = (
    frozenset({"Latn", "Hani", "Hira", "Kana", "Jpan"}),
    frozenset({"Latn", "Hani", "Bopo", "Hanb"}),
    frozenset({"Latn", "Hani", "Hang", "Kore"}),
)


@functools.lru_cache(maxsize=4096)
def scripts_of(char: str) -> frozenset[str] | None:
    """The augmented Script_Extensions of ``char``; None for a character of every script."""
    found = {code for code, pattern in _PATTERNS.items() if pattern.match(char)}
    if not found:
        return None
    for code in list(found):
        found |= _AUGMENT.get(code, set())
    return frozenset(found)


def mixed_scripts(label: str) -> bool:
    """Whether ``label`` mixes scripts beyond the highly restrictive combinations."""
    if label.isascii():
        return False  # Latin and characters common to all scripts
    sets = [s for s in map(scripts_of, label) if s is not None]
    if not sets:
        return False
    if frozenset.intersection(*sets):
        return False  # a single script covers every character
    return not any(all(s & allowed for s in sets) for allowed in _HIGHLY_RESTRICTIVE)


def mixed_digits(label: str) -> bool:
    zeros = {ord(c) - unicodedata.digit(c) for c in label if unicodedata.category(c) == "Nd"}
    return len(zeros) > 1


def problem(raw: str, local: str, domain: str) -> str | None:
    """Why an address could pass for another, or None; ``domain`` in Unicode (not xn--)."""
    if unicodedata.normalize("NFKC", raw) != raw:
        return "contains a compatibility character (a ligature, a full-width or styled letter); type the address plainly"
    for part, where in [(p, "the part before @") for p in local.split(".")] + [(p, "the domain") for p in domain.split(".")]:
        if mixed_scripts(part):
            return f"{where} mixes alphabets ({part!r}), so it can pass for another address"
        if mixed_digits(part):
            return f"{where} mixes digits of different numbering systems ({part!r})"
    return None
