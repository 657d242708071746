"""Categories: the `categories:` rules of config.yaml → the category name of a version.

The first rule that matches names it (prefix of the key, glob on the whole key, content-type
prefix, or tag KEY=VALUE); no match, no category. Recorded per version at backup (journal
and ledger), shown by `list`, searched with `--category`, counted in the digest.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.config import CategoryRule


@dataclass(frozen=True, slots=True)
class Categories:
    rules: tuple[CategoryRule, ...] = ()

    @classmethod
    def of_config(cls, rules: Sequence[CategoryRule]) -> Categories:
        return cls(tuple(rules))

    def name(
        self, key: str, content_type: str | None, tags: Mapping[str, str] | None
    ) -> str | None:
        for rule in self.rules:
            if _matches(rule, key, content_type, tags):
                return rule.name
        return None


def _matches(
    rule: CategoryRule, key: str, content_type: str | None, tags: Mapping[str, str] | None
) -> bool:
    if rule.prefix is not None:
        return key.startswith(rule.prefix)
    if rule.glob is not None:
        return fnmatch.fnmatchcase(key, rule.glob)
    if rule.content_type is not None:
        return (content_type or "").casefold().startswith(rule.content_type.casefold())
    if rule.tag is not None:
        name, _, value = rule.tag.partition("=")
        return tags is not None and tags.get(name) == value
    return False
