"""graph.build_app: what every replica is constructed with (no cluster needed)."""

from __future__ import annotations

import pytest

from graph import build_app


def _bound(app):  # (deployment name, constructor args) of the ingress and what it binds
    ingress = app._bound_deployment
    yield ingress.name, ingress.init_args
    for arg in ingress.init_args:
        if hasattr(arg, "_bound_deployment"):
            yield arg._bound_deployment.name, arg._bound_deployment.init_args


def test_the_builders_settings_reach_every_replica_as_arguments(monkeypatch) -> None:
    # As constructor arguments, not a runtime_env: a config file's ray_actor_options would replace
    # that wholesale (serve_config.yaml sets them for every deployment).
    monkeypatch.setenv("OPENSESAME_SPEC_FETCH_TIMEOUT_S", "7")
    monkeypatch.setenv("OPENSESAME_LLM_API_KEY", "sk-test")
    app = build_app({"settings": {"spec_fetch_timeout_s": 3}})
    seen = dict(_bound(app))
    assert set(seen) == {"Ingress", "CandidateGenerator", "FeatureExtractor", "Ranker"}
    for name, args in seen.items():
        settings = args[-1]
        assert settings["spec_fetch_timeout_s"] == 3, name  # the builder's args win over the env
        assert settings["llm_api_key"] == "sk-test", name
    assert app._bound_deployment.ray_actor_options.get("runtime_env") is None  # never logged


def test_a_bad_setting_is_refused_by_the_builder(monkeypatch) -> None:
    monkeypatch.setenv("OPENSESAME_SPEC_FETCH_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="OPENSESAME_SPEC_FETCH_TIMEOUT_S=.soon."):
        build_app()
