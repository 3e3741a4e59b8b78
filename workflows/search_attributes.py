"""Search attributes of SPEC section 8 (ids, keys, step names: never PHI)."""

from temporalio.common import SearchAttributeKey

JOURNEY_KEY = SearchAttributeKey.for_keyword("JourneyKey")
JOURNEY_VERSION = SearchAttributeKey.for_int("JourneyVersion")
CONTACT_ID = SearchAttributeKey.for_keyword("ContactId")
JOURNEY_STEP = SearchAttributeKey.for_keyword("JourneyStep")
JOURNEY_STATUS = SearchAttributeKey.for_keyword("JourneyStatus")
