"""Static checks on a template, for save-time validation (nothing is rendered)."""

from __future__ import annotations

from collections.abc import Iterator

from jinja2 import meta, nodes
from jinja2.exceptions import TemplateSyntaxError

from mail.sandbox import CONTEXT_NAMES, TemplateSandbox, make_sandbox
from mail.template_types import (
    PARTS,
    Part,
    TemplateIssue,
    TemplateSource,
    link_name_problem,
    link_url_problem,
)

_UNSUPPORTED_TAGS: tuple[tuple[type[nodes.Node], str], ...] = (
    (nodes.Extends, "extends"),
    (nodes.Include, "include"),
    (nodes.Import, "import"),
    (nodes.FromImport, "from ... import"),
)


def _parsed_parts(
    template: TemplateSource,
) -> Iterator[tuple[Part, TemplateSandbox, nodes.Template | TemplateSyntaxError]]:
    for part in PARTS:
        source = template.part(part)
        if source is None:
            continue
        env = make_sandbox(html=part == "html")
        result: nodes.Template | TemplateSyntaxError
        try:
            result = env.parse(source)
            env.compile(result)  # unknown filters and tests surface only here
        except TemplateSyntaxError as exc:
            result = exc
        yield part, env, result


def _link_calls(
    ast: nodes.Template,
) -> Iterator[tuple[nodes.Call, nodes.Expr | None, nodes.Expr | None]]:
    """Every `link(...)` call with its name and URL argument expressions."""
    for call in ast.find_all(nodes.Call):
        if not (isinstance(call.node, nodes.Name) and call.node.name == "link"):
            continue
        kwargs = {kw.key: kw.value for kw in call.kwargs}
        args: list[nodes.Expr | None] = list(call.args)
        name = args[0] if len(args) > 0 else kwargs.get("name")
        url = args[1] if len(args) > 1 else kwargs.get("url")
        extra = len(args) > 2 or set(kwargs) - {"name", "url"} or call.dyn_args or call.dyn_kwargs
        yield call, (None if extra else name), (None if extra else url)


def _const_str(node: nodes.Expr | None) -> str | None:
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return node.value
    return None


def link_names(template: TemplateSource) -> set[str]:
    """Link names passed as string literals to link(), in parts that parse."""
    found: set[str] = set()
    for _part, _env, ast in _parsed_parts(template):
        if isinstance(ast, TemplateSyntaxError):
            continue
        for _call, name, _url in _link_calls(ast):
            literal = _const_str(name)
            if literal is not None:
                found.add(literal)
    return found


def _first_use(ast: nodes.Template, variable: str) -> int | None:
    for name in ast.find_all(nodes.Name):
        if name.name == variable and name.ctx == "load":
            return int(name.lineno)
    return None


def check_syntax(template: TemplateSource) -> list[TemplateIssue]:
    """Problems that would make every render fail or mis-track, in part/line order."""
    issues: list[TemplateIssue] = []
    literal_urls: dict[str, str] = {}
    for part, env, ast in _parsed_parts(template):
        if isinstance(ast, TemplateSyntaxError):
            issues.append(TemplateIssue(part, ast.lineno, ast.message or "syntax error"))
            continue
        for node_type, tag in _UNSUPPORTED_TAGS:
            for node in ast.find_all(node_type):
                issues.append(
                    TemplateIssue(part, node.lineno, f"'{tag}' is not supported in templates")
                )
        allowed = CONTEXT_NAMES | set(env.globals)
        for variable in sorted(meta.find_undeclared_variables(ast) - allowed):
            issues.append(
                TemplateIssue(part, _first_use(ast, variable), f"unknown variable {variable!r}")
            )
        for call, name_node, url_node in _link_calls(ast):
            line = int(call.lineno)
            if part == "subject":
                issues.append(TemplateIssue(part, line, "link() cannot be used in the subject"))
                continue
            if name_node is None or url_node is None:
                issues.append(TemplateIssue(part, line, "link() takes a name and a URL"))
                continue
            name = _const_str(name_node)
            url = _const_str(url_node)
            if isinstance(name_node, nodes.Const):
                problem = link_name_problem(name_node.value)
                if problem:
                    issues.append(TemplateIssue(part, line, problem))
                    continue
            if isinstance(url_node, nodes.Const):
                problem = link_url_problem(url_node.value)
                if problem:
                    label = f"link {name!r}" if name is not None else "link"
                    issues.append(TemplateIssue(part, line, f"{label}: {problem}"))
                    continue
            if name is not None and url is not None:
                if literal_urls.setdefault(name, url) != url:
                    issues.append(
                        TemplateIssue(part, line, f"link {name!r} is used with two different URLs")
                    )
    return issues
