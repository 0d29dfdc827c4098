"""The router's in-memory view of gateways and upstreams, and how a request's `model` resolves.

Lookups are dict hits: no I/O on the request path. A tenant never sees another tenant's gateway:
a foreign id answers "not found", exactly like an unknown one, so ids don't leak.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aigw_contracts import ConfigSnapshot, Gateway, Upstream, errors
from aigw_contracts.catalog import builtin_catalog
from aigw_contracts.ids import is_uuid


@dataclass
class Registry:
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    gateways: dict[str, Gateway] = field(default_factory=dict)
    # (tenant, slug) and (tenant, name) -> gateway id
    _by_slug: dict[tuple[str, str], str] = field(default_factory=dict)
    _by_name: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # Bumped by every change: what was worked out from the gateways and upstreams before (the
    # router's per-gateway plans) is stale once it moves.
    version: int = 0

    # The catalog providers offered (`RouterSettings.catalog_providers`); None: all of them.
    catalog_providers: frozenset[str] | None = None

    def offered(self, upstream: Upstream) -> bool:
        """A catalog model of a provider this deployment has credentials for (own endpoints: yes)."""
        return (
            upstream.kind != "catalog"
            or self.catalog_providers is None
            or upstream.provider in self.catalog_providers
        )

    @classmethod
    def from_snapshot(cls, snapshot: ConfigSnapshot, catalog: list[Upstream] | None = None) -> Registry:
        registry = cls()
        for upstream in [*(builtin_catalog() if catalog is None else catalog), *snapshot.upstreams]:
            registry.upstreams[upstream.id] = upstream
        for gateway in snapshot.gateways:
            registry.add_gateway(gateway)
        return registry

    def add_gateway(self, gateway: Gateway) -> None:
        self.version += 1
        self.remove_gateway(gateway.id)  # an update may rename it
        self.gateways[gateway.id] = gateway
        self._by_slug[(gateway.tenant, gateway.slug)] = gateway.id
        self._by_name.setdefault((gateway.tenant, gateway.name), []).append(gateway.id)

    def remove_gateway(self, gateway_id: str) -> None:
        self.version += 1
        old = self.gateways.pop(gateway_id, None)
        if old is None:
            return
        self._by_slug.pop((old.tenant, old.slug), None)
        ids = self._by_name.get((old.tenant, old.name), [])
        if gateway_id in ids:
            ids.remove(gateway_id)
        if not ids:
            self._by_name.pop((old.tenant, old.name), None)

    def put_upstream(self, upstream: Upstream) -> None:
        self.version += 1
        self.upstreams[upstream.id] = upstream

    def remove_upstream(self, upstream_id: str) -> None:
        self.version += 1
        self.upstreams.pop(upstream_id, None)
        builtin = {u.id: u for u in builtin_catalog()}.get(upstream_id)
        if builtin is not None:  # a deleted override falls back to the shipped catalog entry
            self.upstreams[upstream_id] = builtin

    def on_config_change(self, kind: str, entry_id: str, old: object, new: object) -> None:
        """A `ConfigWatcher` listener: apply one change in place (no rebuild, no lock needed)."""
        if kind == "gateway":
            if isinstance(new, Gateway):
                self.add_gateway(new)
            else:
                self.remove_gateway(entry_id)
        elif kind == "upstream":
            if isinstance(new, Upstream):
                self.put_upstream(new)
            else:
                self.remove_upstream(entry_id)

    def resolve(self, model: str, tenant: str, key_kind: str = "private") -> tuple[Gateway | None, Upstream]:
        """The gateway (None for a direct catalog call) and upstream that `model` names for `tenant`."""
        if model.startswith("@"):
            if key_kind == "public":
                raise errors.Forbidden("public keys may only use gateways by their full id", param="model")
            upstream = self.upstreams.get(model)
            if upstream is None or upstream.kind != "catalog" or not self.offered(upstream):
                raise errors.NotFound(f"The model '{model}' does not exist in the catalog", param="model")
            return None, upstream
        gateway = self._gateway(model, tenant, key_kind)
        upstream = self.upstreams.get(gateway.upstream)
        if upstream is None or (upstream.kind == "own" and upstream.tenant != gateway.tenant):
            raise errors.Unavailable(f"The gateway '{gateway.slug}' has no usable upstream", param="model")
        return gateway, upstream

    def fallbacks(self, gateway: Gateway) -> list[Upstream]:
        """The gateway's fallback upstreams that are still usable, in order (one deleted since the
        gateway was saved is skipped, not an error: the chain is a best effort)."""
        out = []
        for upstream_id in gateway.fallbacks:
            upstream = self.upstreams.get(upstream_id)
            if upstream is not None and (upstream.kind != "own" or upstream.tenant == gateway.tenant):
                out.append(upstream)
        return out

    def _gateway(self, model: str, tenant: str, key_kind: str) -> Gateway:
        not_found = errors.NotFound(
            f"The model '{model}' does not exist or you do not have access to it", param="model"
        )
        if is_uuid(model):
            gateway = self.gateways.get(model)
            if gateway is None or gateway.tenant != tenant:
                raise not_found
            return gateway
        if key_kind == "public":
            raise errors.Forbidden("public keys may only use gateways by their full id", param="model")
        gid = self._by_slug.get((tenant, model))
        if gid is None:
            ids = self._by_name.get((tenant, model), [])
            if len(ids) > 1:
                raise errors.InvalidRequest(
                    f"'{model}' names several gateways; use the slug (name:xxxx) or the id", param="model"
                )
            gid = ids[0] if ids else None
        if gid is None:
            raise not_found
        return self.gateways[gid]

    def models_for(self, tenant: str, key_kind: str = "private") -> list[tuple[str, str, Upstream | None]]:
        """(id, owner, the upstream it calls first) of every model the tenant may name: its
        gateways, and catalog models."""
        gateways = [(g, self.upstreams.get(g.upstream)) for g in self.gateways.values() if g.tenant == tenant]
        out = [(g.id, g.tenant, u) for g, u in gateways]
        if key_kind == "private":
            out += [(g.slug, g.tenant, u) for g, u in gateways]
            out += [
                (u.id, u.provider, u)
                for u in self.upstreams.values()
                if u.kind == "catalog" and self.offered(u)
            ]
        return out
