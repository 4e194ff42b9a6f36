"""Names written to rejects.jsonl and stats.json: reject reasons and cleaning-step counters."""

from __future__ import annotations

from .. import sources as S

# reasons added by cleaning (the readers in ``sources`` report malformed records)
EMPTY_AFTER_CLEAN = "empty_after_clean"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
LOW_LETTER_FRACTION = "low_letter_fraction"
HIGH_SYMBOL_FRACTION = "high_symbol_fraction"
LOW_CJK_FRACTION = "low_cjk_fraction"
REPEATED_CHAR_RUN = "repeated_char_run"
DUPLICATE_LINES = "duplicate_lines"
DUPLICATE_NGRAMS = "duplicate_ngrams"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"

# every reason in the order reports list them: reading, then cleaning, then dedup
REASONS = [
    S.INVALID_UTF8, S.NUL_BYTE, S.LINE_TOO_LONG, S.BLANK_LINE, S.INVALID_JSON, S.NOT_AN_OBJECT, S.MISSING_TEXT,
    S.TEXT_NOT_STRING, S.BAD_CONVERSATION, S.BAD_ROLE, S.BAD_ROLE_ORDER, S.NO_ASSISTANT_TURN, S.INVALID_CSV,
    EMPTY_AFTER_CLEAN, TOO_SHORT, TOO_LONG, LOW_LETTER_FRACTION, HIGH_SYMBOL_FRACTION, LOW_CJK_FRACTION,
    REPEATED_CHAR_RUN, DUPLICATE_LINES, DUPLICATE_NGRAMS, EXACT_DUPLICATE, NEAR_DUPLICATE,
]
# stats["steps"]: how many records each step changed, in the order the steps run
STEPS = ["bom_stripped", "strip_pos_tags", "remove_html", "remove_urls", "fullwidth_to_halfwidth", "nfkc",
         "strip_control", "cjk_punctuation", "collapse_whitespace", "trailing_user_turn_dropped"]
