from aigw_contracts.api import ChatMessage
from aigw_retrieval.rewrite import MAX_QUERIES, conversation_text, parse_queries

CONVERSATION = [
    ChatMessage(role="system", content="be nice"),
    ChatMessage(role="user", content="I ship to Lisbon."),
    ChatMessage(role="assistant", content="Noted."),
    ChatMessage(role="user", content="How long does it take?"),
]


def test_user_rewrite_sends_only_user_turns_and_full_rewrite_both_sides() -> None:
    assert (
        conversation_text(CONVERSATION, "UserRewrite", 3)
        == "User: I ship to Lisbon.\nUser: How long does it take?"
    )
    full = conversation_text(CONVERSATION, "FullRewrite", 3)
    assert full.splitlines() == [
        "User: I ship to Lisbon.",
        "Assistant: Noted.",
        "User: How long does it take?",
    ]
    assert "be nice" not in full
    assert conversation_text(CONVERSATION, "UserRewrite", 1) == "User: How long does it take?"


def test_queries_lose_bullets_and_quotes_and_are_capped() -> None:
    content = '1. "shipping time Lisbon"\n- delivery Portugal\n\n* parcel transit days\nextra query'
    assert parse_queries(content, 100) == ["shipping time Lisbon", "delivery Portugal", "parcel transit days"]
    assert len(parse_queries(content, 100)) == MAX_QUERIES
    assert parse_queries("x" * 50, 10) == ["x" * 10]
    assert parse_queries("  \n ", 10) == []
