"""Unit tests of request validation (http/validation.py) and settings (http/config.py)."""

from __future__ import annotations

import os

import pytest

from userflow.http import config
from userflow.http.config import Settings
from userflow.http.errors import ApiError
from userflow.http.validation import MAX_EMAIL, MAX_NAME, normalise_email, normalise_name

# -- normalise_email ---------------------------------------------------------------------


def test_email_is_trimmed_and_its_domain_lowercased() -> None:
    email, key = normalise_email("  Ann.Smith@EXAMPLE.Com \t")
    assert email == "Ann.Smith@example.com"
    assert key == "ann.smith@example.com"


def test_plus_tag_is_kept() -> None:
    email, key = normalise_email("ann+news@example.com")
    assert email == "ann+news@example.com"
    assert key == "ann+news@example.com"
    assert normalise_email("ann@example.com")[1] != key


def test_key_folds_ascii_case_of_the_local_part() -> None:
    keys = {normalise_email(raw)[1] for raw in ("ann@example.com", "ANN@example.com", "Ann@EXAMPLE.COM", " aNn@Example.com ")}
    assert keys == {"ann@example.com"}


def test_key_folds_only_ascii_case() -> None:
    email, key = normalise_email("\u00c4NN@example.com")  # Ä
    assert email == "\u00c4NN@example.com"
    assert key == "\u00c4nn@example.com"  # Ä is not folded, N is
    assert key != normalise_email("\u00e4nn@example.com")[1]


def test_a_single_script_address_is_a_different_key() -> None:
    latin = normalise_email("anna@example.com")[1]
    cyrillic = normalise_email("\u0430\u043d\u043d\u0430@example.com")[1]  # анна
    assert cyrillic != latin
    assert cyrillic.startswith("\u0430")


# Unicode TS #39: an address that could pass for another is refused, whatever part it hides in.
LOOK_ALIKES = [
    pytest.param("x@ex\u0430mple.com", id="cyrillic-a-in-latin-domain"),
    pytest.param("x@xn--exmple-4nf.com", id="the-same-domain-as-punycode"),
    pytest.param("\u0430nn@example.com", id="cyrillic-a-in-latin-local-part"),
    pytest.param("p\u0430ypal@example.com", id="cyrillic-a-inside-a-word"),
    pytest.param("ann@g\u043e\u043egle.com", id="cyrillic-o-in-domain"),
    pytest.param("ann@\u03bfpenai.com", id="greek-omicron-in-domain"),
    pytest.param("\u0391lice@example.com", id="greek-alpha-capital"),
    pytest.param("ann@example.c\u043em", id="cyrillic-in-the-tld"),
    pytest.param("\u0561pple@example.com", id="armenian-ayb-as-a"),
    pytest.param("ann@\u0570ello.com", id="armenian-ho-as-h"),
    pytest.param("\ufb01x@example.com", id="fi-ligature"),
    pytest.param("ann@\ufb01le.example", id="fi-ligature-domain"),
    pytest.param("\uff41nn@example.com", id="fullwidth-letter"),
    pytest.param("ann@\uff45xample.com", id="fullwidth-domain"),
    pytest.param("ann\u00b2@example.com", id="superscript-two"),
    pytest.param("\u2160ann@example.com", id="roman-numeral-one"),
    pytest.param("\u212aelvin@example.com", id="kelvin-sign"),
    pytest.param("\U0001d41anna@example.com", id="mathematical-bold-a"),
    pytest.param("ann\u2024bob@example.com", id="one-dot-leader"),
    pytest.param("ann1\u0661@example.com", id="mixed-digit-systems"),
]
SINGLE_SCRIPT = [
    pytest.param("ann@example.com", id="latin"),
    pytest.param("j\u00fcrgen@m\u00fcller.example", id="latin-with-diacritics"),
    pytest.param("\u0430\u043d\u043d\u0430@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444", id="cyrillic"),
    pytest.param("\u03b5\u03bb\u03bb\u03b7@example.com", id="greek-local-latin-domain"),
    pytest.param("\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a", id="han"),
    pytest.param("\u30c6\u30b9\u30c8\u6f22\u5b57@example.com", id="katakana-with-han"),
    pytest.param("ann\u30c6\u30b9\u30c8@example.com", id="latin-with-katakana-japanese"),
    pytest.param("\ud55c\uae00\u6f22@example.com", id="hangul-with-han"),
    pytest.param("\u0645\u0631\u064a\u0645@example.com", id="arabic"),
    pytest.param("ann.\u0430\u043d\u043d\u0430@example.com", id="latin-and-cyrillic-in-separate-parts"),
    pytest.param("ann-2024@ex-ample1.com", id="digits-and-hyphens"),
]


@pytest.mark.parametrize("raw", LOOK_ALIKES)
def test_look_alike_addresses_are_refused(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        normalise_email(raw)
    assert caught.value.status == 400 and caught.value.code == "invalid_email"
    assert "look" in caught.value.message or "mixes" in caught.value.message or "compatibility" in caught.value.message


@pytest.mark.parametrize("raw", SINGLE_SCRIPT)
def test_single_script_addresses_pass(raw: str) -> None:
    email, _ = normalise_email(raw)
    assert email.partition("@")[0] == raw.partition("@")[0]


def test_internationalised_domain_is_lowercased_for_the_key() -> None:
    assert normalise_email("ann@B\u00dcCHER.example")[1] == normalise_email("ann@b\u00fccher.example")[1]


@pytest.mark.parametrize(
    "raw",
    [
        "ann@example.com\r\nBcc: eve@example.com",
        "ann\r@example.com",
        "ann@exa\nmple.com",
        "ann\x00@example.com",
        "ann\x1b@example.com",
        "ann\x7f@example.com",
        "ann\x85@example.com",
        "ann\u2028@example.com",
        "ann\u2029@example.com",
    ],
)
def test_control_characters_are_rejected(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        normalise_email(raw)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_email"


@pytest.mark.parametrize("raw", ["", "   ", "ann", "ann@", "@example.com", "ann@@example.com", "ann@localhost", "ann smith@example.com"])
def test_invalid_addresses_are_rejected(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        normalise_email(raw)
    assert (caught.value.status, caught.value.code) == (400, "invalid_email")
    assert caught.value.message.startswith("email:")


def test_email_length_limit() -> None:
    longest = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
    assert len(longest) == MAX_EMAIL == 254
    assert normalise_email(longest)[0] == longest
    with pytest.raises(ApiError) as caught:
        normalise_email("a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com")
    assert caught.value.code == "invalid_email"
    with pytest.raises(ApiError):
        normalise_email("a" * 10_000 + "@example.com")


def test_surrounding_space_does_not_count_towards_the_length() -> None:
    longest = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
    assert normalise_email("   " + longest + "   ")[0] == longest


# -- normalise_name ------------------------------------------------------------------------


def test_name_is_trimmed_and_inner_space_collapsed() -> None:
    assert normalise_name("  Ann \t  Smith  ") == "Ann Smith"
    assert normalise_name("Ann\nSmith") == "Ann Smith"


def test_name_is_nfc_normalised() -> None:
    assert normalise_name("Rene\u0301") == "Ren\u00e9"


def test_name_keeps_case_and_unicode() -> None:
    assert normalise_name("\u00c5sa \u00d6berg-\u674e") == "\u00c5sa \u00d6berg-\u674e"


@pytest.mark.parametrize("raw", ["", " ", "\t\n ", "\u3000"])
def test_empty_or_whitespace_name_is_rejected(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        normalise_name(raw)
    assert (caught.value.status, caught.value.code) == (400, "invalid_fields")


@pytest.mark.parametrize("raw", ["Ann\x00", "Ann\x1bSmith", "Ann\x7f", "Ann\u200bSmith", "Ann\u202eSmith", "Ann\ufeff", "Ann\ue000"])
def test_control_and_invisible_characters_in_names_are_rejected(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        normalise_name(raw)
    assert (caught.value.status, caught.value.code) == (400, "invalid_fields")


def test_name_length_limit() -> None:
    assert normalise_name("x" * MAX_NAME) == "x" * 100
    assert normalise_name("  " + "x" * MAX_NAME + "  ") == "x" * 100
    with pytest.raises(ApiError) as caught:
        normalise_name("x" * (MAX_NAME + 1))
    assert caught.value.code == "invalid_fields"


# -- config.load ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("USERFLOW_", "GEMINI_")):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    command, settings = config.load(["serve"])
    assert command == "serve"
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 8080, "./userflow-data")
    assert settings.public_url is None and settings.smtp_url is None
    assert settings.outbox_mode
    assert settings.email_failure_rate is None
    assert settings.failure_rate == 0.2
    assert (settings.verify_ttl, settings.reminder_after) == (86400.0, 3600.0)


def test_failure_rate_defaults_to_zero_with_smtp() -> None:
    _, settings = config.load(["serve", "--smtp-url", "smtp://mail.example:2525"])
    assert not settings.outbox_mode
    assert settings.failure_rate == 0.0
    assert Settings(smtp_url="smtp://mail.example").failure_rate == 0.0
    assert Settings().failure_rate == 0.2


def test_explicit_zero_failure_rate_is_kept() -> None:
    _, settings = config.load(["serve", "--email-failure-rate", "0"])
    assert settings.failure_rate == 0.0


def test_failure_rate_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERFLOW_EMAIL_FAILURE_RATE", "0.5")
    _, settings = config.load(["serve"])
    assert settings.email_failure_rate == 0.5 and settings.failure_rate == 0.5


def test_failure_rate_from_the_environment_also_with_smtp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERFLOW_EMAIL_FAILURE_RATE", "0.3")
    monkeypatch.setenv("USERFLOW_SMTP_URL", "smtp://mail.example:25")
    _, settings = config.load(["serve"])
    assert settings.smtp_url == "smtp://mail.example:25"
    assert settings.failure_rate == 0.3


@pytest.mark.parametrize(
    ("attribute", "env", "value", "from_env", "flag", "given", "from_flag"),
    [
        ("email_failure_rate", "USERFLOW_EMAIL_FAILURE_RATE", "0.5", 0.5, "--email-failure-rate", "0.1", 0.1),
        ("port", "USERFLOW_PORT", "9000", 9000, "--port", "9100", 9100),
        ("host", "USERFLOW_HOST", "0.0.0.0", "0.0.0.0", "--host", "::1", "::1"),
        ("data_dir", "USERFLOW_DATA_DIR", "/env/dir", "/env/dir", "--data-dir", "/flag/dir", "/flag/dir"),
        ("public_url", "USERFLOW_PUBLIC_URL", "http://env.example", "http://env.example", "--public-url", "https://flag.example", "https://flag.example"),
        ("smtp_url", "USERFLOW_SMTP_URL", "smtp://env.example", "smtp://env.example", "--smtp-url", "smtps://flag.example:465", "smtps://flag.example:465"),
        ("verify_ttl", "USERFLOW_VERIFY_TTL", "60", 60.0, "--verify-ttl", "120", 120.0),
        ("reminder_after", "USERFLOW_REMINDER_AFTER", "60", 60.0, "--reminder-after", "0", 0.0),
        ("mail_from", "USERFLOW_MAIL_FROM", "env@example.com", "env@example.com", "--mail-from", "flag@example.com", "flag@example.com"),
    ],
)
def test_flag_wins_over_environment(
    monkeypatch: pytest.MonkeyPatch,
    attribute: str,
    env: str,
    value: str,
    from_env: object,
    flag: str,
    given: str,
    from_flag: object,
) -> None:
    monkeypatch.setenv(env, value)
    assert getattr(config.load(["serve"])[1], attribute) == from_env
    assert getattr(config.load(["serve", flag, given])[1], attribute) == from_flag


def test_empty_environment_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERFLOW_PORT", "")
    monkeypatch.setenv("USERFLOW_EMAIL_FAILURE_RATE", "")
    _, settings = config.load(["serve"])
    assert settings.port == 8080 and settings.failure_rate == 0.2


def test_gemini_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    monkeypatch.setenv("GEMINI_MODEL", "m")
    monkeypatch.setenv("GEMINI_BASE_URL", "http://127.0.0.1:9")
    _, settings = config.load(["serve"])
    assert (settings.gemini_api_key, settings.gemini_model, settings.gemini_base_url) == ("k", "m", "http://127.0.0.1:9")
    monkeypatch.delenv("GEMINI_MODEL")
    assert config.load(["serve"])[1].gemini_model == Settings.gemini_model


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--email-failure-rate", "1.5"],
        ["serve", "--email-failure-rate", "-0.1"],
        ["serve", "--email-failure-rate", "abc"],
        ["serve", "--email-failure-rate", "nan"],
        ["serve", "--port", "70000"],
        ["serve", "--port", "-1"],
        ["serve", "--port", "http"],
        ["serve", "--verify-ttl", "-5"],
        ["serve", "--verify-ttl", "inf"],
        ["serve", "--reminder-after", "soon"],
        ["serve", "--smtp-url", "http://mail.example"],
        ["serve", "--smtp-url", "smtp://"],
        ["serve", "--public-url", "ftp://example.com"],
        ["serve", "--public-url", "example.com"],
        ["serve", "--unknown-flag"],
        ["frobnicate"],
        [],
    ],
)
def test_invalid_flags_exit_with_code_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        config.load(argv)
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("USERFLOW_EMAIL_FAILURE_RATE", "2"),
        ("USERFLOW_EMAIL_FAILURE_RATE", "lots"),
        ("USERFLOW_PORT", "abc"),
        ("USERFLOW_PORT", "65536"),
        ("USERFLOW_VERIFY_TTL", "-1"),
        ("USERFLOW_SMTP_URL", "mail.example:25"),
        ("USERFLOW_PUBLIC_URL", "javascript:alert(1)"),
    ],
)
def test_invalid_environment_values_exit_with_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit) as caught:
        config.load(["serve"])
    assert caught.value.code == 2
    assert env in capsys.readouterr().err


def test_max_live_actors_is_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERFLOW_MAX_LIVE_ACTORS", "0")
    assert config.load(["serve"])[1].max_live_actors == 1


def test_base_url() -> None:
    assert Settings(public_url="https://example.com/").base_url(8080) == "https://example.com"
    assert Settings(host="127.0.0.1").base_url(1234) == "http://127.0.0.1:1234"
    assert Settings(host="::1").base_url(8080) == "http://[::1]:8080"
