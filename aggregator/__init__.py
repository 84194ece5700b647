"""Cross-blog aggregator and digest mailer."""

__version__ = "0.1.0"
# The product's name, the first word of the User-Agent.
PRODUCT_NAME = "aggregator"
# Where the product lives: linked from the User-Agent so feed owners can find us.
PRODUCT_URL = "https://github.com/learning-layers/aggregator"
# Sent with every fetch (RFC 9110 section 10.1.5): product/version and a contact URL.
USER_AGENT = f"{PRODUCT_NAME}/{__version__} (+{PRODUCT_URL})"
