"""trtalk.export"""
