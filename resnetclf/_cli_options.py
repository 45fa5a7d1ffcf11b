"""Command-line options made from an estimator's own parameters.

Each parameter a command line can give becomes ``--name-with-dashes``, with
the default of the estimator's signature, the first sentence of its numpydoc
entry as help, and a metavar naming the values its ``_parameter_constraints``
take. Text becomes a value by those constraints (an int, a float, None, True
or False, a listed string, a comma-separated tuple); whether the value is
right is left to the estimator's own validation, whose messages
:func:`in_option_terms` rephrases with the options' names. Adding a parameter
to the estimator adds its option: nothing here lists parameters.
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral

from sklearn.utils._param_validation import Hidden, Interval, Options

__all__ = [
    "EstimatorOptions",
    "in_option_terms",
    "parameter_docs",
    "record_spelling",
    "value_from_text",
]

# A sentence ends at a full stop followed by a capital, a digit, a quote or
# markup (not after "e.g." or "i.e.").
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!e\.g\.)(?<!i\.e\.)\s+(?=[A-Z0-9`\"'(:])")
# Help of this many characters or fewer: later sentences or clauses left out.
_SHORT_HELP, _LONG_HELP = 60, 400
_ROLE = re.compile(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`")


def option_name(parameter: str) -> str:
    """``max_iter`` -> ``--max-iter``."""
    return "--" + parameter.replace("_", "-")


def parameter_docs(cls: type) -> dict[str, tuple[str, str]]:
    """``name -> (type, description)`` from the numpydoc "Parameters" section.

    Parameters
    ----------
    cls : type
        A class whose docstring has a numpydoc "Parameters" section.

    Returns
    -------
    docs : dict
        The type line after ``name :`` and the description, joined into one
        line; empty without a docstring (``python -OO``).
    """
    lines = (inspect.getdoc(cls) or "").splitlines()
    docs: dict[str, tuple[str, list[str]]] = {}
    names: list[str] = []
    in_section = False
    for index, line in enumerate(lines):
        underlined = index + 1 < len(lines) and set(lines[index + 1]) == {"-"}
        if underlined:
            if in_section:
                break  # the next section
            in_section = line.strip() == "Parameters"
            continue
        if not in_section or set(line) == {"-"}:
            continue
        if line and not line.startswith(" "):
            head, _, type_spec = line.partition(" : ")
            names = [name.strip() for name in head.split(",")]
            for name in names:
                docs[name] = (type_spec.strip(), [])
        elif names:
            for name in names:
                docs[name][1].append(line.strip())
    return {name: (spec, " ".join(" ".join(words).split())) for name, (spec, words)
            in docs.items()}  # fmt: skip


def _help(description: str) -> str:
    """The first sentence(s) of a description, rst markup removed.

    Sentences are taken until there are at least ``_SHORT_HELP`` characters; a
    first sentence longer than ``_LONG_HELP`` is cut after a clause (at a
    semicolon outside parentheses).
    """
    text = _ROLE.sub(r"\1", description).replace("``", "")
    sentences = _SENTENCE_END.split(text)
    help_text = sentences[0]
    for sentence in sentences[1:]:
        if len(help_text) >= _SHORT_HELP:
            break
        help_text += " " + sentence
    if len(help_text) > _LONG_HELP:
        help_text = _first_clauses(help_text, _LONG_HELP)
    # argparse expands %-formats in help.
    return help_text.replace("%", "%%")


def _first_clauses(text: str, limit: int) -> str:
    """The clauses of ``text`` (split at "; " outside parentheses) that fit
    in ``limit`` characters; the first one in any case."""
    cuts, depth = [], 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == ";" and depth == 0:
            cuts.append(index)
    kept = [cut for cut in cuts if cut <= limit] or cuts[:1]
    return text[: kept[-1]] if kept else text


def _unwrapped(constraints) -> list:
    if isinstance(constraints, str):  # "no_validation"
        return [str]
    return [c.constraint if isinstance(c, Hidden) else c for c in constraints]


def value_from_text(text: str, constraints: Sequence):
    """The value ``text`` stands for, as the constraints read it.

    Tried in order: ``"none"`` (when None is allowed), a
    listed option, ``true``/``false`` for a boolean, a number for an
    interval, then the text itself where strings are allowed, or a
    comma-separated tuple where tuples are. Anything else is returned as
    text, for the estimator's validation to refuse with its own message.

    Parameters
    ----------
    text : str
        The option's value as typed.
    constraints : sequence
        The parameter's entry of ``_parameter_constraints``.

    Returns
    -------
    value : object
        An int, float, bool, None, str or tuple.
    """
    if text.lower() == "none" and None in constraints:
        return None
    for constraint in constraints:
        if isinstance(constraint, Options):
            for option in constraint.options:
                if str(option) == text:
                    return option
    if "boolean" in constraints and text.lower() in ("true", "false"):
        return text.lower() == "true"
    numbers = [c for c in constraints if isinstance(c, Interval) or c == "verbose"]
    if numbers:
        integral = all(c == "verbose" or c.type is Integral for c in numbers)
        number = _number(text, integral)
        if number is not None:
            return number
    if str in constraints:
        return text
    if (tuple in constraints or list in constraints) and "," in text:
        items = tuple(_number(item.strip(), True) for item in text.split(","))
        if None not in items:
            return items
    return text


def _number(text: str, integral: bool) -> int | float | None:
    """An int (when it reads as one and ``integral``) or a float, else None."""
    if integral:
        try:
            return int(text)
        except ValueError:
            pass
    try:
        return float(text)
    except ValueError:
        return None


def _metavar(constraints: Sequence) -> str | None:
    """The values an option takes, e.g. ``{auto,FLOAT}``; None: free text."""
    if str in constraints:
        return None  # argparse's NAME
    words: list[str] = []
    for constraint in constraints:
        if isinstance(constraint, Options):
            words += sorted(map(str, constraint.options))
        elif isinstance(constraint, Interval):
            words.append("INT" if constraint.type is Integral else "FLOAT")
        elif constraint == "verbose":
            words.append("INT")
        elif constraint == "boolean":
            words += ["true", "false"]
        elif constraint in (tuple, list):
            words.append("V,V")
    if None in constraints:
        words.append("none")
    words = list(dict.fromkeys(words))
    if not words:
        return None
    return words[0] if len(words) == 1 else "{" + ",".join(words) + "}"


def record_spelling(namespace, parameter: str, option_string: str) -> None:
    """Remember which option string set ``parameter``, for error messages."""
    namespace.__dict__.setdefault("_spelled", {})[parameter] = option_string


class _ParameterOption(argparse.Action):
    """Store a parameter's value read from text, and the option string used."""

    def __init__(self, option_strings, dest, constraints=(), **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.constraints = constraints

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, value_from_text(values, self.constraints))
        record_spelling(namespace, self.dest, option_string)


@dataclass(frozen=True)
class EstimatorOptions:
    """The options of an estimator's parameters, for one argparse parser.

    Parameters
    ----------
    estimator : type
        A scikit-learn estimator class with ``_parameter_constraints`` and a
        numpydoc "Parameters" section.
    aliases : mapping of str to sequence of str
        Further option strings of a parameter (spellings kept for users).
    excluded : mapping of str to str
        Parameters that get no option, each with the reason why.
    command_defaults : mapping of str to tuple (value, reason)
        Parameters whose option defaults to another value than the
        estimator's, each with the reason why.
    help_texts : mapping of str to str
        Help written for a shell user, for parameters whose documentation
        speaks of values (a callable, a mapping) the command line cannot give.
    """

    estimator: type
    aliases: Mapping[str, Sequence[str]] = field(default_factory=dict)
    excluded: Mapping[str, str] = field(default_factory=dict)
    command_defaults: Mapping[str, tuple[object, str]] = field(default_factory=dict)
    help_texts: Mapping[str, str] = field(default_factory=dict)

    @property
    def parameters(self) -> list[str]:
        """The parameters that get an option, in the signature's order."""
        names = inspect.signature(self.estimator).parameters
        return [name for name in names if name not in self.excluded]

    def add_arguments(self, group) -> None:
        """Add an option for each of :attr:`parameters` to ``group``."""
        signature = inspect.signature(self.estimator).parameters
        constraints = self.estimator._parameter_constraints
        docs = parameter_docs(self.estimator)
        options = {name: option_name(name) for name in self.parameters}
        for name in self.parameters:
            entry = _unwrapped(constraints.get(name, "no_validation"))
            description = docs.get(name, ("", ""))[1]
            default = signature[name].default
            if name in self.command_defaults:
                default = self.command_defaults[name][0]
            strings = [option_name(name), *self.aliases.get(name, ())]
            text = self.help_texts.get(name) or _help(description)
            help_text = shell_terms(text, options)
            kwargs = dict(dest=name, default=default, help=help_text)
            if entry == ["boolean"]:
                group.add_argument(
                    *strings, action=argparse.BooleanOptionalAction, **kwargs
                )
                continue
            group.add_argument(
                *strings,
                action=_ParameterOption,
                constraints=entry,
                metavar=_metavar(entry),
                **kwargs,
            )

    def params(self, args: argparse.Namespace) -> dict:
        """The estimator's keyword arguments that ``args`` holds."""
        return {name: getattr(args, name) for name in self.parameters}

    def option_names(self, args: argparse.Namespace) -> dict[str, str]:
        """``parameter -> option`` as the command line spelled it."""
        names = {name: option_name(name) for name in self.parameters}
        names.update(getattr(args, "_spelled", {}))
        return names


def shell_terms(text: str, options: Mapping[str, str]) -> str:
    """Help ``text`` as a shell user types it: parameters as options
    (``weights=None`` becomes ``--weights none``), and None, True and False
    as the command line spells them.

    Parameters
    ----------
    text : str
        Help written from the estimator's documentation.
    options : mapping of str to str
        ``parameter -> option string``.

    Returns
    -------
    text : str
        The help in option terms.
    """
    for name, option in options.items():
        text = re.sub(rf"\b{name}=", f"{option} ", text)
        if "_" in name:
            text = re.sub(rf"(?<![\w'-]){name}\b(?!_)", option, text)
    for python, shell in (("None", "none"), ("True", "true"), ("False", "false")):
        text = re.sub(rf"\b{python}\b", shell, text)
    return text


# A set of quoted names in a message (scikit-learn lists every scorer).
_NAME_SET = re.compile(r"\{('[^'{}]*'(?:, '[^'{}]*')*)\}")


def _sorted_set(match: re.Match) -> str:
    """A set's names sorted (their order varies by run), at most eight."""
    names = sorted(match.group(1).split(", "))
    if len(names) > 8:
        names = [*names[:6], f"... ({len(names)} in all)"]
    return "{" + ", ".join(names) + "}"


def in_option_terms(message: str, options: Mapping[str, str]) -> str:
    """An estimator's error message in option names, on one line.

    scikit-learn's "The 'p' parameter of E must be X. Got v instead." becomes
    "--p must be X; got v". Elsewhere ``p=`` becomes ``--p`` and a leading
    ``p`` becomes ``--p``; names with an underscore are replaced wherever they
    stand, as they cannot be ordinary words.

    Parameters
    ----------
    message : str
        The text of the estimator's exception.
    options : mapping of str to str
        ``parameter -> option string``.

    Returns
    -------
    line : str
        The message with parameter names replaced, whitespace collapsed.
    """
    line = _NAME_SET.sub(_sorted_set, " ".join(message.split()))
    sklearn = re.fullmatch(r"The '(\w+)' parameter of \w+ must be (.*)\. Got (.*) "
                           r"instead\.", line)  # fmt: skip
    if sklearn and sklearn.group(1) in options:
        name, expected, got = sklearn.groups()
        return f"{options[name]} must be {expected}; got {got}"
    for name, option in options.items():
        line = re.sub(rf"\b{name}=", f"{option} ", line)
        line = re.sub(rf"^{name}\b", option, line)
        if "_" in name:
            line = re.sub(rf"(?<![\w'-]){name}\b", option, line)
    return line
