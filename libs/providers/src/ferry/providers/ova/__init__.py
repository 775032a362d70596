"""The OVA provider: .ova archives and unpacked .ovf folders in an import directory."""
