"""The demo agent: a calculator and a message sender that needs approval."""
