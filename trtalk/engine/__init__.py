"""trtalk.engine"""
