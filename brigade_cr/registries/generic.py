"""Any other JSON object: accepted as an image push, as the old gateway did."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import PUSH, Delivery, RegistryEvent
from brigade_cr.registries._common import make_event


@implementer(IPayloadFormat)
class GenericFormat:
    """
    The fallback: recognises every object and reports one push with nothing
    known about it. Exotic registries and hand-written scripts rely on this.
    """

    name = "generic"
    signatures: tuple[HmacScheme, ...] = ()

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        return True

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        return [make_event(registry=self.name, action=PUSH, time=delivery.received)]
