"""The op table: one row per op (channel rule, cost formula, kernel kind, depth/resolution facts, patched attrs)."""
from fxscale.ops.row import KernelKind, OpRow
from fxscale.ops.table import ROWS, UNKNOWN, get_op, list_ops, module_row, node_row

__all__ = ["KernelKind", "OpRow", "ROWS", "UNKNOWN", "get_op", "list_ops", "module_row", "node_row"]
