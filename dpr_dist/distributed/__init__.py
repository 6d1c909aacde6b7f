"""Distributed building blocks: process-group set-up, the TorchRec-sharded item table and the
DeepSpeed engine for the dense modules (issue 4). Import the submodules directly; importing this
package does not pull TorchRec or DeepSpeed."""
