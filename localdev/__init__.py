"""Local stand-ins for Azure services, so the middle tier can be run and tested on one machine without Azure."""
